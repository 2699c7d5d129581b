"""From piece-level attention to words: merging, Pharaoh alignments and attention statistics.

SentencePiece marks the start of a word with ``▁``. A word's attention is the *sum* over its source
pieces (the probability mass that went to the word) and the *mean* over its target pieces (each
target piece is one attention row). EOS rows and columns are dropped before words are formed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

WORD_START = "\u2581"


def word_groups(pieces: list[str]) -> list[list[int]]:
    """Indices of the pieces of each word: ``["▁Ein", "▁Hu", "nd"]`` -> ``[[0], [1, 2]]``."""
    groups: list[list[int]] = []
    for i, p in enumerate(pieces):
        if p.startswith(WORD_START) or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def words(pieces: list[str]) -> list[str]:
    return ["".join(pieces[i] for i in g).lstrip(WORD_START) for g in word_groups(pieces)]


def merge_to_words(weights: Tensor, src_pieces: list[str], tgt_pieces: list[str]) -> Tensor:
    """weights ``(T, S)`` over pieces (no EOS) -> ``(T_words, S_words)``: sum over source pieces of a
    word, mean over target pieces of a word."""
    src_g, tgt_g = word_groups(src_pieces), word_groups(tgt_pieces)
    cols = torch.stack([weights[:, g].sum(1) for g in src_g], 1) if src_g else weights[:, :0]  # (T, Sw)
    return torch.stack([cols[g].mean(0) for g in tgt_g], 0) if tgt_g else cols[:0]  # (Tw, Sw)


def select_heads(attention: Tensor, layer: int = -1, heads: list[int] | None = None) -> Tensor:
    """attention ``(T, L, H, S)`` -> ``(T, S)``: one layer, the mean over the chosen heads (all by default)."""
    a = attention[:, layer]  # (T, H, S)
    if heads:
        a = a[:, heads]
    return a.mean(1)


def pharaoh(weights: Tensor) -> str:
    """Hard alignment ``(T_words, S_words)`` -> ``"s-t s-t ..."``: each target word to its argmax
    source word, sorted by source then target index (Pharaoh format, 0-based). A target word that
    attended nothing (an all-zero row: monotonic attention that stopped nowhere) stays unaligned."""
    if weights.numel() == 0:
        return ""
    best, where = weights.max(1)
    links = sorted((int(s), t) for t, (s, w) in enumerate(zip(where.tolist(), best.tolist())) if w > 0)
    return " ".join(f"{s}-{t}" for s, t in links)


def attention_stats(weights: Tensor, threshold: float = 0.5) -> dict:
    """Statistics of a word-level attention matrix ``(T_words, S_words)``.

    entropy: mean over target words of the row entropy (nats; 0 = one source word, log S = uniform).
    unattended: share of source words whose attention never exceeds ``threshold`` at any target
        step (a hint of under-translation).
    repeated: share of source words that exceed ``threshold`` at more than one target step (a hint
        of repetition / over-translation).
    """
    if weights.numel() == 0:
        return {"entropy": 0.0, "unattended": 0.0, "repeated": 0.0, "src_words": weights.shape[1],
                "tgt_words": weights.shape[0]}
    rows = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    entropy = float(-(rows * rows.clamp_min(1e-12).log()).sum(1).mean()) + 0.0  # + 0.0: no -0.0
    above = (weights > threshold).sum(0)  # (S_words,)
    s = weights.shape[1]
    return {
        "entropy": round(entropy, 4),
        "max_entropy": round(math.log(s), 4) if s else 0.0,
        "unattended": round(float((above == 0).sum()) / s, 4),
        "repeated": round(float((above > 1).sum()) / s, 4),
        "src_words": s,
        "tgt_words": weights.shape[0],
    }
