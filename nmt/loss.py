"""Losses as small pure functions."""

from __future__ import annotations

import torch
from torch import Tensor

from typing import TYPE_CHECKING

from nmt.onednn import matmul_nt, matmul_tn, prepack
from nmt.vocab import PAD_ID

if TYPE_CHECKING:
    from nmt.models.output import ModelOutput

CHUNK_ELEMENTS = 2**22
"""Logits held at once by :func:`linear_label_smoothed_nll`: 16 MiB of fp32, about a CPU's shared
L3 cache (at V = 8000, 512 rows: the rows are rounded down to a multiple of 64). On the 2-core EPYC, (2875, 256) x (8000, 256) forward + backward,
chunked time / logits-path time in two sweeps (``measure_output_layer`` of ``bench/loss_speed.py``,
5 repeats): 131 rows 1.03, 0.94; 262 rows 0.97, 0.89; 524 rows 0.88, 0.86; 1048 rows 0.86, 0.91."""


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy over rows of logits with one exponential per logit in all.

    With ``p = softmax(x)``, ``lse = logsumexp(x)``, ``log p_v = x_v - lse`` and V classes, per row::

        nll  = lse - x_y
        loss = (1 - eps) * nll + eps * (lse - mean_v x_v)
        d loss / d x = p - (1 - eps) * onehot(y) - eps / V

    The forward pass computes ``p`` (one fused pass; ``exp`` is the cost on a CPU: on a 2-core
    AVX2 EPYC a (2875, 8000) softmax takes 57 ms, an ``exp`` alone 56) and reads ``lse`` off the
    row's largest logit, ``lse = x_max - log p_max`` (``p_max >= 1/V``: no underflow, so the loss
    stays finite however wrong the model); the backward pass edits the saved ``p`` in place into
    the gradient instead of recomputing a softmax. So backward runs once: a second one (``retain_graph``)
    raises autograd's in-place modification error rather than return a wrong gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, keep: Tensor, eps: float):
        p, loss, nll = _smoothed_rows(logits.float(), target, eps)  # p (N, V); loss, nll (N,)
        ctx.save_for_backward(p, target, keep)
        ctx.eps, ctx.dtype = eps, logits.dtype
        return (loss * keep).sum(), (nll * keep).sum()

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_nll: Tensor):
        grad, target, keep = ctx.saved_tensors  # grad: the forward's softmax, edited in place
        eps = ctx.eps
        if eps:
            grad.sub_(eps / grad.shape[-1])
        grad.scatter_add_(1, target[:, None], torch.full_like(grad[:, :1], -(1 - eps)))
        grad.mul_((grad_loss * keep)[:, None])  # padding rows get no gradient
        return grad.to(ctx.dtype), None, None, None


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


def _smoothed_rows(x: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of fp32 logits ``x (n, V)``: the softmax ``p (n, V)``, the smoothed loss and the
    NLL ``(n,)`` (formulas: :class:`_SmoothedCrossEntropy`)."""
    p = torch.softmax(x, dim=-1)  # (n, V)
    # lse = x_max - log p_max: softmax keeps the order, so p's largest entry is the largest
    # logit's. amax, not max(-1): no indices (0.3 against 4.5 ms at (524, 8000) on the EPYC).
    lse = x.amax(-1) - torch.log(p.amax(-1))  # (n,)
    nll = lse - x.gather(1, target[:, None]).squeeze(1)  # (n,)
    loss = (1 - eps) * nll + eps * (lse - x.mean(-1)) if eps else nll
    return p, loss, nll


def _chunked_linear_loss(h: Tensor, w: Tensor, target: Tensor, eps: float, want_grad: bool):
    """Sums of the smoothed loss and the NLL of ``logits = h w^T`` over rows ``h (N, D)`` (no
    padding), with ``w (V, D)``, one chunk of rows at a time; with ``want_grad`` also the
    gradients of the loss sum in fp32, ``(N, D)`` for h and ``(V, D)`` for w. h and w are in the
    dtype to multiply in; the softmax runs in fp32."""
    rows = max(64, CHUNK_ELEMENTS // w.shape[0] // 64 * 64)  # a multiple of 64: few product shapes (nmt.onednn)
    loss, nll = h.new_zeros((), dtype=torch.float32), h.new_zeros((), dtype=torch.float32)
    grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if want_grad else None
    grad_w = None
    w_nt = prepack(w, rows)  # (V, D), reordered once for all chunks' products (fp32 on a CPU)
    w_t = prepack(w.t(), rows) if want_grad else None  # (D, V)
    for start in range(0, h.shape[0], rows):
        h_c, t_c = h[start : start + rows], target[start : start + rows]  # (n, D), (n,)
        p, loss_c, nll_c = _smoothed_rows(matmul_nt(h_c, w_nt).float(), t_c, eps)  # p (n, V)
        loss, nll = loss + loss_c.sum(), nll + nll_c.sum()
        if want_grad:  # d loss / d logits = p - (1 - eps) onehot(y) - eps / V, edited into p
            if eps:
                p.sub_(eps / p.shape[-1])
            p.scatter_add_(1, t_c[:, None], torch.full_like(p[:, :1], -(1 - eps)))
            g = p.to(h.dtype)  # (n, V); bf16/fp16 products are kept and summed over chunks in fp32
            grad_h[start : start + rows] = matmul_nt(g, w_t)  # (n, D)
            grad_w_c = matmul_tn(g, h_c).float()  # (V, D)
            grad_w = grad_w_c if grad_w is None else grad_w.add_(grad_w_c)
    if want_grad and grad_w is None:  # no rows
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
    return loss, nll, grad_h, grad_w


class _LinearSmoothedCrossEntropy(torch.autograd.Function):
    """:class:`_SmoothedCrossEntropy` of ``h w^T`` computed in chunks of rows: the forward pass
    also computes both gradients while each chunk's logits are still in cache, so neither the
    ``(N, V)`` logits nor their softmax outlive a chunk; the backward pass only scales them by the
    incoming gradient (a scalar). Under autocast the products run in the autocast dtype; the
    gradients are kept in fp32 until that scaling, so a gradient scaler's factor (fp16) is applied
    to fp32 values (though the fp16 products themselves see no scaling: not measured with fp16)."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, target: Tensor, eps: float):
        dtype = h.dtype
        if torch.is_autocast_enabled(h.device.type):
            dtype = torch.get_autocast_dtype(h.device.type)
        with torch.autocast(h.device.type, enabled=False):
            loss, nll, grad_h, grad_w = _chunked_linear_loss(h.to(dtype), w.to(dtype), target, eps, want_grad=True)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = h.dtype, w.dtype
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_nll: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_loss).to(ctx.dtypes[0]), (grad_w * grad_loss).to(ctx.dtypes[1]), None, None


def linear_label_smoothed_nll(hidden: Tensor, weight: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
    """:func:`label_smoothed_nll` of ``logits = hidden @ weight^T`` without the logits tensor.

    hidden ``(B, T, D)``, weight ``(V, D)``, target ``(B, T)`` (PAD ignored: its rows are dropped
    before the product, so padding costs no output-layer work). The logits are formed a few hundred
    rows at a time (:data:`CHUNK_ELEMENTS`) and each chunk's gradients are taken at once, the way
    fused linear cross-entropy kernels do it (e.g. Liger-Kernel's); same ``(loss_sum, nll_sum)``
    and gradients as the logits path, less time on a CPU and no ``(B, T, V)`` activations.
    """
    keep = (target != PAD_ID).reshape(-1)  # (B*T,)
    h = hidden.reshape(-1, hidden.shape[-1])[keep]  # (N, D) real tokens only
    t = target.reshape(-1)[keep]  # (N,)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        loss, nll = _LinearSmoothedCrossEntropy.apply(h, weight, t, float(smoothing))
    else:
        loss, nll, _, _ = _chunked_linear_loss(h, weight.to(h.dtype), t, float(smoothing), want_grad=False)
    return loss, nll.detach()


def output_loss(out: ModelOutput, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
    """``(loss_sum, nll_sum)`` of a model's teacher-forced output against target ``(B, T)``:
    from its logits, or, when it left the output projection to the loss
    (``out.projection = (hidden, weight)``), by :func:`linear_label_smoothed_nll`."""
    if out.logits is not None:
        return label_smoothed_nll(out.logits, target, smoothing)
    return linear_label_smoothed_nll(*out.projection, target, smoothing)


def fuse_output_projection(device: torch.device | str) -> bool:
    """Whether training asks models for ``project=False`` (:func:`linear_label_smoothed_nll`): on
    a CPU, where it was measured faster (``bench/loss_speed.py``); not yet on CUDA, where the
    chunked products have not been measured against the unfused ones.

    Under DDP the output matrix is then used outside the wrapped ``forward``; that is fine with
    ``find_unused_parameters=False`` (our setting: its gradient hook fires once, tied or not), but
    with ``True`` DDP would count an untied output matrix as unused and fail."""
    return torch.device(device).type == "cpu"


def coverage_loss(attention: Tensor, target_mask: Tensor) -> Tensor:
    """See et al. 2017: ``sum_t sum_i min(a_t,i, c_t,i)`` with ``c_t = sum_{tau<t} a_tau``.

    attention ``(B, T, S)`` (heads/layers already averaged), target_mask ``(B, T)`` True = real
    step. The coverage is *exclusive* of the current step (including it would make the minimum
    equal to a_t and the loss a constant). Zero for attention that never returns to a position.
    """
    coverage = attention.cumsum(1) - attention  # (B, T, S): exclusive running sum
    return (torch.minimum(attention, coverage).sum(-1) * target_mask).sum()
