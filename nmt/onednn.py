"""fp32 linear layers through oneDNN on a CPU, for training and decoding.

torch runs a CPU ``nn.Linear`` in fp32 through its BLAS, Intel MKL, which on an AMD CPU with
AVX-512 ran at about the rate AVX2 code can reach (32 FLOP per cycle and core), half of oneDNN's. oneDNN, which torch also
ships (for bf16 and int8), picks its kernels by the instruction sets the CPU has. Measured on 2
cores of an AMD EPYC (Zen 5, AVX-512), fp32, ``y = x W^T + b``: one thread, ``x`` (640, 256) and ``W``
(8000, 256) or (1024, 256), MKL 91-106 GFLOP/s, oneDNN 198-232, with the same accuracy against a
float64 product (largest error 5.6e-5 vs 3.8e-5 for MKL, on values of size ~16); two threads,
2048^3, MKL 207-210, oneDNN 463-465. ``bench/decode.py`` and ``bench/train_throughput.py`` measure
the whole effect (``NMT_ONEDNN=0`` for the MKL path).

:func:`use_onednn` gives every plain ``nn.Linear`` of a model a forward that multiplies fp32 CPU
tensors (no autocast) by oneDNN: with gradients through :class:`OneDnnLinearFunction` (training),
without through :func:`onednn_linear` for products of at most :data:`MAX_ROWS` rows (a decoding
step's). Anything else (a GPU, bf16 autocast, the encoder's large products while decoding) is the
usual ``F.linear``, training under CPU autocast with its rows padded as oneDNN's are here
(:func:`padded_rows`): torch runs bf16 products as oneDNN primitives too, and the primitive kept
per row count took the bf16 Transformer's peak RSS to 1.80 GB over 60 updates against 1.40 GB
padded (for 4-5% of the tokens/s: the padding copies). The loss's bf16 products are padded too
(:func:`matmul_nt`, :func:`matmul_tn`): unpadded, its last chunk's new row count in nearly every
batch grew the RSS by 2-4 MB an update (``bench/rss_growth.py``, 500 updates: 3.04 GB against
1.16 GB padded; ``nmt train``, 2,000 updates: 7.7 GB against 1.25). Weights and state dict stay as they are.
Dynamically quantised layers are not plain ``nn.Linear`` and are left alone. :func:`matmul_nt`,
:func:`matmul_tn` and :func:`prepack` serve the products of the chunked output-layer loss.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def onednn_usable() -> bool:
    """Whether :func:`use_onednn` changes anything here: an x86-64 CPU, a torch built with oneDNN and
    its linear operator, and no ``NMT_ONEDNN=0`` in the environment (the switch back to MKL)."""
    return (os.environ.get("NMT_ONEDNN", "1") != "0"
            and platform.machine().lower() in ("x86_64", "amd64")
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


MAX_ROWS = 1024  # decoding: larger products (the encoder's: sentences x source length) stay with MKL


def padded_rows(m: int) -> int:
    """The row count a product of ``m`` rows is computed with: ``m`` rounded up to a multiple of 64
    below 1,024 rows, above that to one of 8 sizes per power of two (at most 1/8 more rows).

    oneDNN builds and keeps a primitive per product shape, and the row count changes at nearly every
    decoding step (beams x live sentences) and every training batch, so without rounding the memory
    grew with the number of shapes seen: beam 5, 1,000 sentences, 2 cores, decoding in-process, peak
    RSS 721 MB against 438 MB with MKL; rounded 445-468 MB, at about the same speed."""
    step = max(64, 1 << max(0, m.bit_length() - 4))
    return -(-m // step) * step


def _product(rows: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``rows W^T + b`` by oneDNN: rows ``(M, K)`` (any strides), weight ``(N, K)`` -> ``(M, N)``."""
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


def _padded(x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, int]:
    """x ``(..., K)`` as rows ``(M', K)``, zero-padded to ``M' = padded_rows(M)``, and ``M``; in
    ``dtype`` if given and it pads (the cast in the same copy)."""
    rows = x.reshape(-1, x.shape[-1])  # (M, K)
    m, m_padded = rows.shape[0], padded_rows(rows.shape[0])
    if m_padded > m:  # not F.pad: that fills all M' rows with zeros before copying (2.5x the time)
        padded = rows.new_empty(m_padded, rows.shape[1], dtype=dtype)  # (M', K)
        padded[:m] = rows
        padded[m:] = 0
        rows = padded
    return rows, m


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x W^T + b`` by oneDNN: x ``(..., K)``, weight ``(N, K)``, bias ``(N,)`` or None -> ``(..., N)``.
    fp32 CPU tensors; no gradient (see :class:`OneDnnLinearFunction` for one). The rows are padded
    with zeros to :func:`padded_rows` and the extra output rows dropped."""
    rows, m = _padded(x)
    return _product(rows, weight, bias)[:m].view(*x.shape[:-1], weight.shape[0])


def _low_precision_cpu(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are bf16 or fp16 CPU tensors: torch multiplies those by oneDNN too,
    keeping a primitive per row count, so :func:`matmul_nt` and :func:`matmul_tn` pad their rows
    to :func:`padded_rows` as for fp32 (the bf16 loss's last chunk has a new row count in nearly
    every batch)."""
    return a.device.type == "cpu" and a.dtype == b.dtype and a.dtype in (torch.bfloat16, torch.float16)


def matmul_nt(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b^T`` with no gradient: a ``(M, K)``, b ``(N, K)`` (any strides, or :func:`prepack`'s)
    -> ``(M, N)``; by oneDNN for fp32 CPU tensors where :func:`onednn_usable`, else torch's matmul
    (bf16/fp16 on a CPU with its rows padded, see :func:`_low_precision_cpu`). For products inside
    an autograd function of their own (the chunked output-layer loss, :mod:`nmt.loss`)."""
    if b.is_mkldnn or (a.dtype == b.dtype == torch.float32 and a.device.type == "cpu" and onednn_usable()):
        return onednn_linear(a, b, None)  # b: a :func:`prepack` result or a dense matrix
    if _low_precision_cpu(a, b):
        rows, m = _padded(a)  # (M', K)
        return (rows @ b.t())[:m]
    return a @ b.t()


def matmul_tn(a: Tensor, b: Tensor) -> Tensor:
    """``a^T b``, the weight gradient of a linear layer, with no gradient: a ``(M, N)``, b ``(M, K)``
    -> ``(N, K)``; by oneDNN for fp32 CPU tensors where :func:`onednn_usable` (rows padded to
    :func:`padded_rows`; the result a transposed view where ``N > K``), else torch's matmul
    (bf16/fp16 on a CPU with its rows padded, see :func:`_low_precision_cpu`).

    oneDNN contracts over the operands' last dimension, here M, so both go in transposed: the
    second ("weights") it reorders itself, fast, while the first it needs contiguous, a copy by
    torch that is slow for large matrices (a (3072, 1024) fp32 transpose: 2.3 ms, the product
    itself 3.6 ms). So the smaller of the two is the one copied: for N > K the product computed
    is ``(b^T a)^T``. On the EPYC, M = 3072: (N, K) = (1024, 256) 6.7 -> 4.6 ms, (768, 256)
    5.0 -> 3.9 ms; MKL's ``a.t() @ b`` 8.3 and 5.9 ms."""
    if _low_precision_cpu(a, b):
        (a, _), (b, _) = _padded(a), _padded(b)
        return a.t() @ b
    if not (a.dtype == b.dtype == torch.float32 and a.device.type == "cpu" and onednn_usable()):
        return a.t() @ b
    (a, _), (b, _) = _padded(a.contiguous()), _padded(b.contiguous())  # zero rows add nothing
    if a.shape[1] > b.shape[1]:
        return _product(b.t(), a.t(), None).t()  # (K, N) computed, (N, K) view
    return _product(a.t(), b.t(), None)  # (N, K)


def prepack(weight: Tensor, rows: int) -> Tensor:
    """``weight (N, K)`` (any strides) in oneDNN's own layout for products of about ``rows`` rows
    by :func:`matmul_nt`, where :func:`onednn_usable` and the weight is fp32 on a CPU (else as it
    is): for a weight used in several products, which otherwise reorders it every time (the
    chunked loss's output layer: (8000, 256), 512 rows: 4.7 -> 4.3 ms a product)."""
    if weight.dtype == torch.float32 and weight.device.type == "cpu" and onednn_usable():
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)
    return weight


class OneDnnLinearFunction(torch.autograd.Function):
    """:func:`onednn_linear` with its gradients, each one oneDNN product over the padded rows
    (padding rows are zero in x and in the incoming gradient, so they add nothing):
    ``dx = dy W`` ``(M, K)``, ``dW = dy^T x`` ``(N, K)``, ``db = sum_rows dy`` ``(N,)``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        rows, m = _padded(x)  # (M', K)
        ctx.save_for_backward(rows, weight)
        ctx.m, ctx.has_bias = m, bias is not None
        return _product(rows, weight, bias)[:m].view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, weight = ctx.saved_tensors  # (M', K), (N, K)
        g, _ = _padded(grad.contiguous())  # (M', N), as x's rows
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = _product(g, weight.t(), None)[: ctx.m].view(*grad.shape[:-1], weight.shape[1]) if need_x else None
        grad_w = matmul_tn(g, rows) if need_w else None  # (N, K)
        return grad_x, grad_w, g.sum(0) if ctx.has_bias and need_b else None  # (..., K), (N, K), (N,)


class OneDnnLinear(nn.Linear):
    """An ``nn.Linear`` whose products on fp32 CPU tensors (no autocast) are oneDNN's: with
    gradients by :class:`OneDnnLinearFunction`, without (decoding) by :func:`onednn_linear` up to
    :data:`MAX_ROWS` rows."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.dtype == torch.float32 and x.device.type == "cpu" and self.weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu")):
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return OneDnnLinearFunction.apply(x, self.weight, self.bias)
            if x.numel() <= MAX_ROWS * x.shape[-1]:
                return onednn_linear(x, self.weight, self.bias)
        elif x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.is_grad_enabled():
            rows, m = _padded(x, torch.get_autocast_dtype("cpu"))  # (M', K): see padded_rows
            return F.linear(rows, self.weight, self.bias)[:m].view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)


def use_onednn(model: nn.Module, untie: bool = True) -> nn.Module:
    """Turn every plain ``nn.Linear`` in ``model`` into a :class:`OneDnnLinear` (in place; same
    parameters and state dict). ``untie`` (decoding only): first give a tied output layer its own
    ``nn.Linear`` over the embedding matrix (:func:`nmt.models.untie_output`, sharing it: the
    vocabulary projection is the largest product of a decoding step); training leaves it tied (its
    output product is the loss's). Nothing changes where :func:`onednn_usable` is false."""
    if not onednn_usable():
        return model
    if untie:
        from nmt.models import untie_output

        untie_output(model, copy=False)
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = OneDnnLinear
    return model
