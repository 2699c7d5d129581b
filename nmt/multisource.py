"""Multiple sources (Zoph & Knight 2016; Libovický & Helcl 2017; Libovický et al. 2018): N source
sentences, e.g. German and French, translated together into one target.

Text form: the N sources of one example are one line, joined by TABs (what ``paste`` writes):
``nmt translate`` reads them so, and ``nmt prepare`` writes ``valid.src``/``test.src`` so. An empty
field is a missing source (Nishimura et al. 2018): it is encoded as its EOS alone.

Tensor form: one ``(B, N * S')`` id tensor, source n in columns ``[n S', (n+1) S')``, each segment
its ids + EOS, PAD-padded to the longest segment ``S'`` of the batch. Every model-contract tensor
stays ``(B, S)`` with ``S = N S'``: the memory, the source mask (True = a real position), the
attention, the coverage. A single-source batch is the case N = 1. A model encodes the segments as
``B N`` rows of one shared encoder (:func:`source_rows`; a learned embedding of the source index
tells the sources apart) and lays the states back side by side (:func:`merge_rows`); how the
decoder combines them is the model's ``combine`` switch (``flat``, ``serial``, ``hierarchical``, ``gated``;
:mod:`nmt.attention`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nmt.errors import NmtError
from nmt.vocab import EOS_ID, PAD_ID

SEPARATOR = "\t"


def num_sources(model) -> int:
    """How many sources a model reads (its config's ``sources``; 1 for a model without the field)."""
    return getattr(getattr(model, "config", None), "sources", 1)


def split_fields(line: str, n: int, where: str = "input") -> list[str]:
    """The n TAB-separated sources of one line. A line of a single-source model is one field
    (its TABs are spaces). A wrong number of fields is an error naming ``where``."""
    if n == 1:
        return [line]
    fields = line.split(SEPARATOR)
    if len(fields) != n:
        raise NmtError(f"{where}: {len(fields)} TAB-separated source(s), but the model reads {n} "
                       f"(one field per source, in the order of nmt prepare's sources; an empty field is a missing source)")
    return fields


def pack_sources(seqs: list[list[list[int]]], n: int) -> Tensor:
    """Per example its n id lists (each ending in EOS) -> ``(B, n * S')``, each source in its own
    PAD-padded segment of width ``S'`` (the longest list of the batch)."""
    width = max(len(s) for example in seqs for s in example)
    src = torch.full((len(seqs), n, width), PAD_ID, dtype=torch.long)  # (B, N, S')
    for row, example in enumerate(seqs):
        for i, seq in enumerate(example):
            src[row, i, : len(seq)] = torch.as_tensor(seq)
    return src.view(len(seqs), n * width)  # (B, N*S')


def source_rows(src: Tensor, n: int) -> Tensor:
    """``(B, N*S')`` -> ``(B*N, S')``: each source segment a row of its own (row ``b N + i`` is
    source i of example b), for an encoder that reads one sentence per row."""
    b, s = src.shape
    if s % n:
        raise ValueError(f"a {n}-source batch needs a width divisible by {n}, got {s}")
    return src.reshape(b * n, s // n)


def source_index(rows: int, n: int, device=None) -> Tensor:
    """The source of each of the ``B*N`` rows of :func:`source_rows`: ``(B*N,)`` = 0..N-1 repeated."""
    return torch.arange(rows, device=device) % n


def merge_rows(x: Tensor, n: int) -> Tensor:
    """``(B*N, S', ...)`` -> ``(B, N*S', ...)``: the rows of one example side by side again."""
    return x.reshape(x.shape[0] // n, n * x.shape[1], *x.shape[2:])


def segments(x: Tensor, n: int, dim: int = -1) -> list[Tensor]:
    """The n source segments of ``x`` along ``dim`` (views)."""
    return list(x.chunk(n, dim=dim)) if n > 1 else [x]


def drop_sources(src: Tensor, n: int, p: float, generator: torch.Generator, keep_first: bool = False) -> Tensor:
    """Source dropout for training: each source of each example is left out with probability p
    (its segment becomes its EOS alone, as a missing source reads), so that the model learns to
    translate when a source is missing (Nishimura et al. 2018 fill missing sources with a <NULL>
    token). An example that would lose every source keeps them all. src ``(B, N*S')`` -> the same
    shape, a new tensor; the draw is a function of ``generator`` only (CPU). ``keep_first``: never
    the first source (document context, :mod:`nmt.context`: only the previous sentences are left out)."""
    b = src.shape[0]
    drop = torch.rand(b, n, generator=generator) < p  # (B, N)
    if keep_first:
        drop[:, 0] = False
    drop &= ~drop.all(1, keepdim=True)
    out = src.view(b, n, -1).clone()  # (B, N, S')
    drop = drop.to(src.device)
    out[drop] = PAD_ID
    out[..., 0] = torch.where(drop, EOS_ID, out[..., 0])
    return out.view(b, -1)

