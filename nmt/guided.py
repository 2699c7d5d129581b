"""Supervised (guided) alignment: gold word alignments teach one attention head where to look.

The loss (Liu et al. 2016, COLING, "NMT with supervised attention"; Chen et al. 2016, AMTA,
"Guided alignment training"; Garg et al. 2019, EMNLP, one head of a Transformer layer) is the
cross-entropy of the attention against the gold alignment, each target row normalised::

    L_align = - sum_t sum_s  G~[t, s] * log(a[t, s] + eps),     G~[t, s] = G[t, s] / sum_s' G[t, s']

summed over the target pieces that have at least one link (a row without links adds 0, never
NaN). Training minimises ``NLL + lambda * L_align`` (``train.guided_alignment`` = lambda), as
Marian's ``--guided-alignment`` and OpenNMT-py's ``-lambda_align`` do.

Gold alignments come in Pharaoh format, one line per training pair: ``i-j`` links source word
``i`` to target word ``j`` (0-based, words = the whitespace tokens of the line, what fast_align or
eflomal read). ``nmt prepare --train-align FILE`` turns them into links between SentencePiece
pieces (every piece of source word i with every piece of target word j) and stores them in
``train.align.pt``; :func:`gold_matrix` makes the ``(B, T, S)`` matrix of a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-6  # inside the log: a gold link on a weight of exactly 0 (masked, or a hard mechanism) stays finite


def read_pharaoh(line: str) -> list[tuple[int, int]]:
    """``"0-0 1-2"`` -> ``[(0, 0), (1, 2)]`` (source, target). Raises ValueError on anything else
    (``S-P`` possible-link marks such as ``1p2`` are not accepted)."""
    links = []
    for item in line.split():
        s, sep, t = item.partition("-")
        if not sep or not (s.isascii() and s.isdigit() and t.isascii() and t.isdigit()):
            raise ValueError(f"{item!r} is not a Pharaoh link i-j")
        links.append((int(s), int(t)))
    return links


def piece_links(links: list[tuple[int, int]], src_groups: list[list[int]], tgt_groups: list[list[int]]
                ) -> list[tuple[int, int]]:
    """Word links -> piece links: every piece of the source word with every piece of the target
    word. ``*_groups``: the piece indices of each word (:func:`nmt.alignment.word_groups`). Raises
    ValueError when a link names a word the line does not have."""
    out = []
    for s, t in links:
        if s >= len(src_groups) or t >= len(tgt_groups):
            raise ValueError(f"link {s}-{t} but the line has {len(src_groups)} source and {len(tgt_groups)} "
                             "target words")
        out.extend((ps, pt) for ps in src_groups[s] for pt in tgt_groups[t])
    return sorted(set(out))


def pack_links(per_pair: list[list[tuple[int, int]]]) -> dict[str, Tensor]:
    """Piece links of every pair -> ``{"links": (N, 2) int32, "offsets": (n + 1,)}``."""
    offsets = torch.zeros(len(per_pair) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor([len(p) for p in per_pair], dtype=torch.long).cumsum(0)
    flat = torch.tensor([link for p in per_pair for link in p], dtype=torch.int32).view(-1, 2)
    return {"links": flat, "offsets": offsets}


def gold_matrix(links: list[Tensor], tgt_len: int, src_len: int) -> Tensor:
    """The gold alignment of a batch: ``links[b]`` ``(N_b, 2)`` piece links (source, target) ->
    ``(B, T, S)`` with 1 at each link; links beyond ``T`` / ``S`` (truncated sequences) are
    dropped. Row t is the decoder step that predicts target piece t."""
    gold = torch.zeros(len(links), tgt_len, src_len)
    for b, pairs in enumerate(links):
        pairs = pairs.long()
        pairs = pairs[(pairs[:, 0] < src_len) & (pairs[:, 1] < tgt_len)]
        gold[b, pairs[:, 1], pairs[:, 0]] = 1.0
    return gold


def alignment_loss(attention: Tensor, gold: Tensor) -> Tensor:
    """``- sum_t sum_s G~[t, s] log(a[t, s] + eps)`` over the rows with links (see the module).

    attention ``(B, T, S)`` (one head of one layer: each row sums to 1 over the real source
    positions), gold ``(B, T, S)`` 0/1 links. Returns a scalar sum, to be divided by the batch's
    target tokens with the NLL."""
    gold = gold.to(attention.dtype)
    rows = gold.sum(-1, keepdim=True)  # (B, T, 1): links per target piece
    normalised = gold / rows.clamp(min=1.0)
    return -(normalised * torch.log(attention + EPS)).sum()


def aer(hypothesis: set[tuple[int, int]], sure: set[tuple[int, int]], possible: set[tuple[int, int]] | None = None
        ) -> float:
    """Alignment error rate (Och & Ney 2003): ``1 - (|A & S| + |A & P|) / (|A| + |S|)``, with the
    sure links counted as possible too (P includes S). Links are (source, target) pairs."""
    possible = (possible or set()) | sure
    if not hypothesis and not sure:
        return 0.0
    return 1.0 - (len(hypothesis & sure) + len(hypothesis & possible)) / (len(hypothesis) + len(sure))


def guided_head(ckpt: dict) -> tuple[int, int] | None:
    """``(layer, head)`` trained with ``train.guided_alignment`` or ``train.agreement`` (from a
    checkpoint's stored config), or None for a model trained with neither."""
    train = ckpt.get("meta", {}).get("config", {}).get("train", {})
    trained = train.get("guided_alignment", 0) > 0 or train.get("agreement", 0) > 0
    return (train.get("align_layer", -1), train.get("align_head", 0)) if trained else None


def default_heads(ckpt: dict, layer: int | None, heads: str | None) -> tuple[int, str | None]:
    """The layer and heads (``"0,2"``; None = all) to read alignments from when the user named
    ``layer`` / ``heads`` or not (None): the guided head where the checkpoint has one (naming only
    the heads keeps its layer), else the last layer's mean over heads."""
    guided = guided_head(ckpt)
    if layer is None:
        layer = guided[0] if guided else -1
    if heads is None and guided and layer == guided[0]:
        heads = str(guided[1])
    return layer, heads
