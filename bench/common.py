"""Helpers shared by the benchmark scripts: peak RSS, JSON output, small tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or of its finished children), in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def sync(device) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def machine() -> dict:
    """What the figures were measured on: CPU model, cores, torch's CPU kernels, native bf16."""
    import torch

    from nmt.device import cpu_has_native_bf16

    model = platform.processor()
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "cpu_kernels": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def usable_amps(amps: list[str], cuda: bool | None = None) -> list[str]:
    """``amps`` without bf16 when it would run emulated (a CPU without native bf16, and no GPU or
    ``cuda=False``): such a figure measures the emulation (15x slower than fp32 on an AVX2 EPYC),
    not the toolkit. ``cuda``: whether the figures run on the GPU (default: whether there is one)."""
    here = machine()
    on_gpu = here["gpu"] is not None if cuda is None else cuda
    if "bf16" in amps and not here["native_bf16"] and not on_gpu:
        print(f"skipping bf16: {here['cpu']} has no native bf16 (AVX512-BF16/AMX)", file=sys.stderr)
        return [a for a in amps if a != "bf16"]
    return amps


def write_json(path: str | Path, data) -> None:
    """Write ``{"machine": machine(), "results": data}`` to ``path`` and name the machine on stderr."""
    here = machine()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"machine": here, "results": data}, indent=2) + "\n")
    print(f"wrote {path} (measured on {here['cores']} cores of {here['cpu']}, {here['cpu_kernels']}, "
          f"native bf16: {'yes' if here['native_bf16'] else 'no'}{', ' + here['gpu'] if here['gpu'] else ''})",
          file=sys.stderr)


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def run_measured(cmd: list[str], env: dict | None = None, stdin: Path | None = None) -> tuple[float, str, str, float]:
    """Run ``cmd`` to completion in a fresh wrapper process, so that the peak RSS is this command's
    alone (its own children included), reading ``stdin`` (a file; none by default). Returns (wall
    seconds, stdout, stderr, peak RSS in MiB); raises with the tail of the output when the command fails."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "dt = time.perf_counter() - t; sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
               "print(f'\\nWALL {dt} RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
               "sys.exit(r.returncode)")
    with open(stdin or os.devnull) as inp:
        r = subprocess.run([sys.executable, "-c", wrapper, *cmd], stdin=inp, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    *err, last = r.stderr.rstrip().splitlines()
    _, wall, _, rss = last.split()
    return float(wall), r.stdout, "\n".join(err), int(rss) / 1024
