"""Batches from the prepared id caches: token-based, bucketed by length, reproducible order.

A batch holds at most ``batch_tokens`` tokens, counted as ``sentences x longest side`` (padding
included), so every batch costs about the same. The order of an epoch is a pure function of
``(seed, epoch)``: resuming at batch ``i`` of epoch ``e`` replays exactly the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nmt.errors import NmtError
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID

MAX_TOKENS = 256  # longer training sequences are truncated to this many pieces


@dataclass
class Batch:
    """src ``(B, S)`` with EOS, tgt_in ``(B, T)`` = BOS + y, tgt_out ``(B, T)`` = y + EOS; PAD-padded.
    align ``(B, T, S)``: the gold piece links (1 = linked; row t predicts tgt_out[t]) when the
    corpus has alignments (:mod:`nmt.guided`), else None."""

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    align: Tensor | None = None

    @property
    def target_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())

    def apply(self, fn) -> "Batch":
        """The same batch with ``fn`` applied to every tensor (a device move, pinning)."""
        return Batch(fn(self.src), fn(self.tgt_in), fn(self.tgt_out), None if self.align is None else fn(self.align))

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return self.apply(lambda t: t.to(device, non_blocking=non_blocking))


class ParallelIds:
    """The encoded pairs of one split, kept as flat id tensors + offsets, and their gold piece
    links (``{"links": (N, 2), "offsets"}``, :func:`nmt.guided.pack_links`) when given.

    With several sources (``packed["more_src"]``, :mod:`nmt.multisource`) a batch's ``src`` holds
    them side by side, each in a segment as wide as the batch's longest source, and ``src_len``
    is that padded width (``sources x`` the longest of the example's sources)."""

    def __init__(self, packed: dict, links: dict | None = None):
        self.srcs, self.tgt, self.links = [packed["src"], *packed.get("more_src", [])], packed["tgt"], links
        self.sources = len(self.srcs)
        self.context = int(packed.get("context", 0))  # sources 2.. are the previous sentences (nmt.context)
        lengths = torch.stack([self._lengths(side) for side in self.srcs])  # (N, n)
        self.src_len = lengths.max(0).values * self.sources
        self.tgt_len = self._lengths(self.tgt)

    @staticmethod
    def _lengths(side: dict) -> Tensor:
        """Tokens of each sequence with its EOS (or BOS), after truncation to MAX_TOKENS."""
        return (side["offsets"][1:] - side["offsets"][:-1]).clamp(max=MAX_TOKENS - 1) + 1

    @classmethod
    def load(cls, path: Path, links: bool = False, vocab_size: int = 0) -> "ParallelIds":
        """Read a split's ``*.ids.pt``; with ``links`` also its ``*.align.pt`` when there is one
        (batches then carry the gold matrix, which only guided alignment needs). ``vocab_size`` > 0:
        every id must be below it (else the folder mixes files of two preparations)."""
        if not Path(path).exists():
            raise NmtError(f"{path}: not found; run `nmt prepare` first (or fix data.dir)")
        packed = torch.load(path, weights_only=True)
        align = Path(path).with_name(Path(path).name.replace(".ids.pt", ".align.pt"))
        links = torch.load(align, weights_only=True) if links and align.exists() else None
        if links is not None and len(links["offsets"]) != len(packed["src"]["offsets"]):
            raise NmtError(f"{align}: has links for {len(links['offsets']) - 1} pairs, not "
                           f"{len(packed['src']['offsets']) - 1}; run nmt prepare again")
        sides = (packed["src"], *packed.get("more_src", []), packed["tgt"])
        top = max((int(s["ids"].max()) for s in sides if s["ids"].numel()), default=-1) if vocab_size else -1
        if top >= vocab_size > 0:
            raise NmtError(f"{path}: has piece ids up to {top}, but spm.model has {vocab_size} pieces (files of two "
                           "preparations); run nmt prepare again")
        return cls(packed, links)

    def __len__(self) -> int:
        return len(self.src_len)

    def _seq(self, side: dict, i: int) -> Tensor:
        a, b = int(side["offsets"][i]), int(side["offsets"][i + 1])
        return side["ids"][a : min(b, a + MAX_TOKENS - 1)].long()

    def collate(self, indices: list[int]) -> Batch:
        n = len(indices)
        width = int(self.src_len[indices].max()) // self.sources  # each source's segment
        t_len = int(self.tgt_len[indices].max())
        src = torch.full((n, self.sources, width), PAD_ID, dtype=torch.long)  # (B, N, S')
        tin = torch.full((n, t_len), PAD_ID, dtype=torch.long)
        tout = torch.full((n, t_len), PAD_ID, dtype=torch.long)
        for row, i in enumerate(indices):
            for k, side in enumerate(self.srcs):
                s = self._seq(side, i)
                src[row, k, : len(s)] = s
                src[row, k, len(s)] = EOS_ID
            t = self._seq(self.tgt, i)
            tin[row, 0] = BOS_ID
            tin[row, 1 : len(t) + 1] = t
            tout[row, : len(t)] = t
            tout[row, len(t)] = EOS_ID
        src = src.view(n, -1)  # (B, N*S')
        if self.links is None:
            return Batch(src, tin, tout)
        from nmt.guided import gold_matrix

        offsets = self.links["offsets"]
        links = [self.links["links"][int(offsets[i]) : int(offsets[i + 1])] for i in indices]
        links = [l[(l < MAX_TOKENS - 1).all(1)] for l in links]  # none onto the EOS of a truncated sequence
        return Batch(src, tin, tout, gold_matrix(links, t_len, width))  # align (B, T, S)


def make_batches(
    src_len: Tensor, tgt_len: Tensor, batch_tokens: int, seed: int, shuffle: bool = True, pool: int = 100
) -> list[list[int]]:
    """Group sentence indices into batches of at most ``batch_tokens`` padded tokens.

    Shuffle (when asked), then sort pools of about ``pool`` batches by length so that each batch
    has little padding, cut greedily, and shuffle the batch order. Deterministic in ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(src_len)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    longest = torch.maximum(src_len, tgt_len)
    pool_size = max(1, pool * batch_tokens // max(1, int(longest.float().mean())))
    batches: list[list[int]] = []
    for start in range(0, n, pool_size):
        chunk = order[start : start + pool_size]
        chunk = chunk[torch.argsort(longest[chunk] * 4096 + tgt_len[chunk], stable=True)].tolist()  # ties: less target padding
        current, width = [], 0
        for i in chunk:
            w = max(width, int(longest[i]))
            if current and w * (len(current) + 1) > batch_tokens:
                batches.append(current)
                current, w = [], int(longest[i])
            current.append(i)
            width = w
        if current:
            batches.append(current)
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def epoch_batches(data: ParallelIds, batch_tokens: int, seed: int, epoch: int, rank: int = 0, world: int = 1):
    """The batches of one epoch for one rank (rank r takes every world-th batch, truncated evenly)."""
    batches = make_batches(data.src_len, data.tgt_len, batch_tokens, seed * 100003 + epoch)
    usable = len(batches) - len(batches) % world
    return batches[rank:usable:world]
