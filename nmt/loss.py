"""Losses as small pure functions."""

from __future__ import annotations

import torch
from torch import Tensor

from nmt.vocab import PAD_ID


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy over rows of logits, forward and backward each in a few passes.

    With ``log p = log_softmax(x)`` and V classes, per row::

        nll  = -log p_y
        loss = (1 - eps) * nll + eps * mean_v(-log p_v)
        d loss / d x = softmax(x) - (1 - eps) * onehot(y) - eps / V

    The forward pass is one fused ``log_softmax`` and one mean (``torch.logsumexp`` is several
    passes); the backward pass recomputes ``softmax(x)`` (one fused pass, cheaper than ``exp`` of a
    saved ``log p``) and edits it in place, so it writes one (N, V) tensor where autograd through
    log_softmax + gather + mean would materialise several.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, keep: Tensor, eps: float):
        logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
        nll = -logp.gather(1, target[:, None]).squeeze(1)  # (N,)
        loss = (1 - eps) * nll - eps * logp.mean(-1) if eps else nll
        ctx.save_for_backward(logits, target, keep)
        ctx.eps = eps
        return (loss * keep).sum(), (nll * keep).sum()

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_nll: Tensor):
        logits, target, keep = ctx.saved_tensors
        eps = ctx.eps
        grad = torch.softmax(logits.float(), dim=-1)  # (N, V)
        if eps:
            grad.sub_(eps / logits.shape[-1])
        grad.scatter_add_(1, target[:, None], torch.full_like(grad[:, :1], -(1 - eps)))
        grad.mul_((grad_loss * keep)[:, None])  # padding rows get no gradient
        return grad.to(logits.dtype), None, None, None


def label_smoothed_nll(logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy with label smoothing (Szegedy et al. 2016), summed over non-pad tokens.

    logits ``(B, T, V)``, target ``(B, T)`` (PAD ignored). The smoothed target puts ``1 - eps`` on
    the gold token and spreads ``eps`` uniformly over the V entries (as ``F.cross_entropy``):

        loss = (1 - eps) * (-log p(y)) + eps * mean_v(-log p(v))

    Returns ``(loss_sum, nll_sum)``: the training objective and the plain NLL (for perplexity;
    no gradient flows through it).
    """
    v = logits.shape[-1]
    keep = (target != PAD_ID).reshape(-1).float()  # (B*T,) 1 = real token
    loss, nll = _SmoothedCrossEntropy.apply(logits.reshape(-1, v), target.reshape(-1), keep, float(smoothing))
    return loss, nll.detach()


def coverage_loss(attention: Tensor, target_mask: Tensor) -> Tensor:
    """See et al. 2017: ``sum_t sum_i min(a_t,i, c_t,i)`` with ``c_t = sum_{tau<t} a_tau``.

    attention ``(B, T, S)`` (heads/layers already averaged), target_mask ``(B, T)`` True = real
    step. The coverage is *exclusive* of the current step (including it would make the minimum
    equal to a_t and the loss a constant). Zero for attention that never returns to a position.
    """
    coverage = attention.cumsum(1) - attention  # (B, T, S): exclusive running sum
    return (torch.minimum(attention, coverage).sum(-1) * target_mask).sum()
