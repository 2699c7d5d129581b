"""Where and in which precision to run: the device, autocast, and what a CPU can do in bf16.

Shared by training (``train.device``, ``train.amp``) and decoding (``--device``, ``--amp``); the
precision checks take the name of the setting they check, for their one-line errors.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from nmt.errors import NmtError

AMPS = ("none", "bf16", "fp16")  # autocast precisions: train.amp and translate --amp


def pick_device(name: str) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when there is one) as a device; anything else, or
    CUDA where there is none, is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NmtError("--device cuda: no CUDA device is available here; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise NmtError(f"unknown device {name!r}; valid: cpu, cuda, auto")
    return torch.device(name)


def autocast(device: torch.device, amp: str, option: str = "train.amp"):
    """The autocast context for ``amp`` (none | bf16 | fp16); ``option`` names the setting in errors."""
    if amp == "none":
        return nullcontext()
    if amp not in AMPS:
        raise NmtError(f"unknown {option} {amp!r}; valid: {', '.join(AMPS)}")
    if amp == "fp16" and device.type != "cuda":
        raise NmtError(f"{option} fp16 needs CUDA; use bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AVX512-BF16 or AMX.

    Without it, bf16 autocast on the CPU is emulated: on an AVX2 AMD EPYC a Transformer update
    took 15x as long as in fp32 (the backward's bf16 GEMMs fall to a reference kernel). (oneDNN's
    own ``_is_mkldnn_bf16_supported`` also says yes for plain AVX-512, where bf16 is emulated too.)"""
    cpu = torch.cpu
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch: ask oneDNN
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN: let autocast decide
            return True


def amp_warning(device: torch.device, amp: str, option: str = "train.amp") -> str | None:
    """A one-line warning when ``amp`` will make training or decoding slower, not faster, on ``device``."""
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return (f"warning: {option} bf16 on a CPU without native bf16 (AVX512-BF16/AMX) is emulated "
                "and many times slower than fp32; use none")
    return None


def check_amp(model: torch.nn.Module, device: torch.device, amp: str, option: str = "train.amp") -> None:
    """Fail in one line where ``amp`` cannot run ``model`` at all: dynamic int8 layers take fp32
    input only, and oneDNN has no bf16 LSTM kernel on a CPU without native bf16 (both raise
    mid-run otherwise)."""
    if amp == "none":
        return
    modules = list(model.modules())
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in modules):
        raise NmtError(f"{option} {amp} cannot run int8 layers (--quantize int8 takes fp32 input); use one or the other")
    if (amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16()
            and any(isinstance(m, torch.nn.LSTM) for m in modules)):
        raise NmtError(f"{option} bf16 cannot run an LSTM on this CPU (no native bf16, so no oneDNN kernel); "
                       "use none")
