"""Bidirectional agreement: a source->target and a target->source model trained together, each
pulled towards the other's attention.

Both directions of a pair attend over the same matrix of word pairs. The forward model's
attention ``A_st`` has a row per target position and a column per source position; the reverse
model's ``A_ts`` has them the other way round. Where the two models agree on the alignment,
``A_st`` and ``A_ts`` transposed put their weight on the same cells. Two costs measure how far
they are from that (``train.agreement_cost``):

* ``trace`` (Cohn et al. 2016, NAACL, "Incorporating structural alignment biases into an
  attentional NMT model", the bilingual symmetry bonus; mantis ``biattentional``)::

      cost = - tr(A_ts A_st) = - sum_t sum_s A_st[t, s] * A_ts[s, t]

  For a square pair of the same permutation the bonus ``tr`` is I, the sentence length (with
  EOS) and its maximum; it is 0 when the two put their weight on disjoint cells.

* ``squared`` (Cheng et al. 2016, IJCAI, "Agreement-based joint training for bidirectional
  attention-based NMT", the squared-error agreement; after Liang et al. 2006's alignment by
  agreement)::

      cost = sum_t sum_s (A_st[t, s] - A_ts[s, t])^2

Training minimises ``NLL_st + NLL_ts + lambda * cost`` (``train.agreement`` = lambda), every
term a sum over the batch divided by its target tokens, as the other losses are.

The layout needs no bookkeeping: a batch is src ``x + EOS`` and tgt_out ``y + EOS``, so the
reverse batch (:func:`reverse_batch`) reads ``y + EOS`` and predicts ``x + EOS``, and its
attention ``(B, S, T)`` transposed lines up cell by cell with the forward ``(B, T, S)``, EOS
with EOS. Padding is masked out of both costs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nmt.data import Batch
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID


def reverse_batch(batch: Batch) -> Batch:
    """The same pairs the other way round: src ``y + EOS`` (the forward tgt_out), tgt_in
    ``BOS + x``, tgt_out ``x + EOS`` (the forward src). Shapes ``(B, T)`` / ``(B, S)``."""
    tgt_in = torch.cat([torch.full_like(batch.src[:, :1], BOS_ID), batch.src[:, :-1]], 1)  # (B, S)
    tgt_in = tgt_in.masked_fill(tgt_in == EOS_ID, PAD_ID)  # x's EOS is an output, never an input
    return Batch(batch.tgt_out, tgt_in, batch.src)


def cell_mask(batch: Batch) -> Tensor:
    """``(B, T, S)`` True on the cells of a real target and a real source position."""
    return (batch.tgt_out != PAD_ID)[:, :, None] & (batch.src != PAD_ID)[:, None, :]


def trace_cost(forward: Tensor, reverse: Tensor, mask: Tensor) -> Tensor:
    """``-sum A_st * A_ts^T`` over the real cells (Cohn et al. 2016's bonus, negated).

    forward ``(B, T, S)``, reverse ``(B, S, T)`` (each row a distribution), mask ``(B, T, S)``.
    Returns a scalar sum over the batch."""
    return -(forward * reverse.transpose(1, 2) * mask).sum()


def squared_cost(forward: Tensor, reverse: Tensor, mask: Tensor) -> Tensor:
    """``sum (A_st - A_ts^T)^2`` over the real cells (Cheng et al. 2016's squared error).
    Shapes as :func:`trace_cost`."""
    return ((forward - reverse.transpose(1, 2)).square() * mask).sum()


COSTS = {"trace": trace_cost, "squared": squared_cost}


def agreement_cost(forward: Tensor, reverse: Tensor, batch: Batch, cost: str) -> Tensor:
    """The named cost between the forward attention ``(B, T, S)`` and the reverse ``(B, S, T)``
    of ``batch`` (the forward batch), as a scalar sum."""
    return COSTS[cost](forward.float(), reverse.float(), cell_mask(batch))
