"""fp32 linear layers through oneDNN for CPU decoding.

torch runs a CPU ``nn.Linear`` in fp32 through its BLAS, Intel MKL, which on an AMD CPU with
AVX-512 runs at the rate of AVX2 code (about 32 FLOP per cycle and core). oneDNN, which torch also ships (for bf16 and int8), picks its kernels by
the instruction sets the CPU has. Measured on 2 cores of an AMD EPYC (Zen 5, AVX-512), one
thread, fp32, ``y = x W^T + b`` with ``x`` (640, 256) and ``W`` (8000, 256) or (1024, 256):
MKL 91-106 GFLOP/s, oneDNN 198-232, with the same accuracy against a float64 product (largest error
5.6e-5 vs 3.8e-5 for MKL, on values of size ~16). ``bench/decode.py`` measures the whole effect
(``NMT_ONEDNN=0`` for the MKL path).

:func:`use_onednn` gives every plain ``nn.Linear`` of a model a forward that calls oneDNN when no
gradient is wanted (inference mode, ``no_grad``), the input and weights are fp32 on a CPU, no
autocast is on and the product has at most :data:`MAX_ROWS` rows (a decoding step's); anything else (training, a GPU, bf16 autocast, the encoder's large products) is the usual ``F.linear``. Weights
and state dict stay as they are. Dynamically quantised layers are not plain ``nn.Linear`` and are
left alone.
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


MAX_ROWS = 1024  # larger products (the encoder's: sentences x source length) stay with MKL


def padded_rows(m: int) -> int:
    """The row count a product of ``m`` rows (at most :data:`MAX_ROWS`) is computed with: ``m``
    rounded up to a multiple of 64.

    oneDNN builds and keeps a primitive per product shape, and in decoding the row count changes at
    nearly every step (beams x live sentences), so without rounding the memory grew with the number
    of shapes seen: beam 5, 1,000 sentences, 2 cores, decoding in-process, peak RSS 721 MB against
    438 MB with MKL; rounded 445-468 MB, at about the same speed. The encoder's larger products
    through oneDNN added 30-50 MB more to a greedy ``nmt translate`` (485-503 against 451-458 MB) for
    no speed that the runs could tell apart, hence :data:`MAX_ROWS`."""
    return -(-m // 64) * 64


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x W^T + b`` by oneDNN: x ``(..., K)``, weight ``(N, K)``, bias ``(N,)`` or None -> ``(..., N)``.
    fp32 CPU tensors; no gradient (oneDNN's operator has no backward in torch). The rows are padded
    with zeros to :func:`padded_rows` and the extra output rows dropped."""
    rows = x.reshape(-1, x.shape[-1])  # (M, K)
    m = rows.shape[0]
    if (pad := padded_rows(m) - m) > 0:
        rows = F.pad(rows, (0, 0, 0, pad))  # (M', K)
    y = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")  # (M', N)
    return y[:m].view(*x.shape[:-1], weight.shape[0])


class OneDnnLinear(nn.Linear):
    """An ``nn.Linear`` whose inference forward on fp32 CPU tensors is :func:`onednn_linear`."""

    def forward(self, x: Tensor) -> Tensor:
        if (not torch.is_grad_enabled() and x.dtype == torch.float32 and x.device.type == "cpu"
                and self.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and x.numel() <= MAX_ROWS * x.shape[-1]):
            return onednn_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_onednn(model: nn.Module) -> nn.Module:
    """Turn every plain ``nn.Linear`` in ``model`` into a :class:`OneDnnLinear` (in place; same
    parameters), after giving a tied output layer its own ``nn.Linear`` over the embedding matrix
    (:func:`nmt.models.untie_output`, sharing it: the vocabulary projection is the largest product of
    a decoding step). For decoding only: nothing changes where :func:`onednn_usable` is false."""
    if not onednn_usable():
        return model
    from nmt.models import untie_output

    untie_output(model, copy=False)
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = OneDnnLinear
    return model
