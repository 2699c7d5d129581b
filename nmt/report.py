"""What `nmt translate` writes besides translations: attention pictures, alignments, statistics.

Everything comes from the attention of the hypothesis that was printed (beam search follows the
back-pointers of the attention too), never from a separate greedy pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from nmt.alignment import attention_stats, merge_to_words, pharaoh, select_heads
from nmt.multisource import num_sources, pack_sources, split_fields
from nmt.search import Hypothesis
from nmt.visualize import attention_figures, write_attention_page
from nmt.vocab import PAD_ID


@dataclass
class AttentionReport:
    """Collects pictures (written at :meth:`close`) and streams alignments/stats per chunk."""

    vocab: object
    picture_dir: Path | None = None
    alignments: TextIO | None = None
    stats: TextIO | None = None
    layer: int = -1
    heads: list[int] | None = None
    threshold: float = 0.5
    encoder_attention: object = None  # callable(line) -> (L, H, S, S) or None
    inline_alignments: bool = False  # alignments go into a TAB column of the translation output
    sources: int = 1  # the model's sources (nmt.multisource): with several, pictures only
    items: list = field(default_factory=list)
    line_no: int = 0

    @property
    def wanted(self) -> bool:
        return self.inline_alignments or any(x is not None for x in (self.picture_dir, self.alignments, self.stats))

    def add(self, lines: list[str], hyps: list[list[Hypothesis]]) -> list[str]:
        """Handle one chunk; returns the Pharaoh string per line ("" for empty lines)."""
        aligned = []
        for line, h in zip(lines, hyps):
            aligned.append(self._one(line, h[0]) if h else "")
            if not h and self.stats:
                self.stats.write(json.dumps({"line": self.line_no + 1}) + "\n")
            self.line_no += 1
        if self.alignments:
            self.alignments.write("".join(a + "\n" for a in aligned))
            self.alignments.flush()
        return aligned

    def _one(self, line: str, hyp: Hypothesis) -> str:
        att = hyp.attention  # (T+1, L, H, S+1), EOS row and column included
        labels_src, tgt_pieces = source_labels(self.vocab, line, self.sources, att.shape[-1]), self.vocab.pieces(hyp.tokens)
        word_att = None
        if self.sources == 1:  # word alignments name the words of one source
            chosen = select_heads(att, self.layer, self.heads)[:-1, :-1]  # (T, S) without EOS
            word_att = merge_to_words(chosen, labels_src[:-1], tgt_pieces)
        if self.stats and word_att is not None:
            record = {"line": self.line_no + 1, **attention_stats(word_att, self.threshold)}
            self.stats.write(json.dumps(record) + "\n")
        if self.picture_dir is not None:
            labels_tgt = tgt_pieces + ["</s>"]
            figures = attention_figures(att, labels_src, labels_tgt)
            enc = self.encoder_attention(line) if self.encoder_attention is not None else None
            if enc is not None:  # (L, H, S, S): rows and columns are both source pieces
                figures += [(f"encoder.layer{l}.avg", enc[l].mean(0), labels_src, labels_src)
                            for l in range(enc.shape[0])]
            self.items.append({"index": self.line_no, "source": line, "output": self.vocab.decode(hyp.tokens),
                               "score": hyp.score, "figures": figures})
        return "" if word_att is None else pharaoh(word_att)

    def close(self) -> Path | None:
        if self.picture_dir is None:
            return None
        return write_attention_page(self.picture_dir, self.items)


def source_labels(vocab, line: str, sources: int, width: int) -> list[str]:
    """The labels of the ``width`` source positions a hypothesis's attention has: each source's
    pieces (cut to what the search read) and its ``</s>``."""
    from nmt.translate import SearchOptions, clean_line

    limit = SearchOptions().max_src_tokens  # what Translator cuts each source to
    ids = vocab.encode([clean_line(f) for f in split_fields(line, sources)])
    if sources == 1:
        return vocab.pieces(ids[0][: width - 1]) + ["</s>"]
    return [label for seq in ids for label in vocab.pieces(seq[:limit]) + ["</s>"]][:width]


def encoder_self_attention(model, vocab, device):
    """A function line -> encoder self-attention ``(L, H, S, S)`` over the real positions, for
    models that expose it."""
    from nmt.translate import clean_line
    from nmt.vocab import EOS_ID

    n = num_sources(model)

    @torch.inference_mode()
    def run(line: str):
        ids = [seq + [EOS_ID] for seq in vocab.encode([clean_line(f) for f in split_fields(line, n)])]
        src = pack_sources([ids], n).to(device)  # (1, S)
        enc = model.encode(src, need_attention=True)
        if "self_attn" not in enc:
            return None
        real = (src[0] != PAD_ID).cpu()
        return enc["self_attn"][0].float().cpu()[..., real, :][..., real]  # (L, H, S_real, S_real)

    return run


@torch.inference_mode()
def attention_shape(model, device) -> tuple[int, int]:
    """``(L, H)`` of the attention a model's ``step`` returns, from one step on a one-token source."""
    from nmt.vocab import BOS_ID, EOS_ID

    state = model.init_state(model.encode(torch.full((1, num_sources(model)), EOS_ID, device=device)))
    _, _, attn = model.step(torch.tensor([BOS_ID], device=device), state, need_attention=True)  # (1, L, H, S)
    return attn.shape[1], attn.shape[2]


def parse_heads(text: str | None, option: str = "--align-heads") -> list[int] | None:
    """``"0,2"`` -> ``[0, 2]``; None (all heads) stays None; anything else is a one-line error."""
    from nmt.errors import NmtError

    try:
        return [int(h) for h in text.split(",")] if text else None
    except ValueError:
        raise NmtError(f"{option} expects comma-separated head numbers, got {text!r}") from None


def check_heads(shape: tuple[int, int], layer: int, heads: list[int] | None, option: str = "--align-layer",
                heads_option: str = "--align-heads") -> None:
    """Fail before any output when the layer (``option``) or the heads (``heads_option``) are out of range."""
    from nmt.errors import NmtError

    n_layers, n_heads = shape
    if not -n_layers <= layer < n_layers:
        raise NmtError(f"{option} {layer}: the model's attention has {n_layers} layer(s) "
                       f"(0..{n_layers - 1}, or -1 for the last)")
    bad = [h for h in heads or [] if not 0 <= h < n_heads]
    if bad:
        raise NmtError(f"{heads_option} {bad[0]}: the model's attention has {n_heads} head(s) (0..{n_heads - 1})")
