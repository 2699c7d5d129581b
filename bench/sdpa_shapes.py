"""Why the Transformer leaves cuDNN out of fused attention on CUDA: per-shape set-up cost.

    python bench/sdpa_shapes.py            # needs CUDA

Times bf16 ``scaled_dot_product_attention`` with a key mask over 200 calls whose (B, S) shapes
change every call, as NMT batches do, with PyTorch's default kernel choice and with cuDNN excluded;
prints ms per call and host peak RSS growth for each.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def run(backends, calls: int = 200, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        b, s = int(torch.randint(16, 160, (1,), generator=g)), int(torch.randint(5, 60, (1,), generator=g))
        q, k, v = (torch.randn(b, 4, s, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        mask = torch.ones(b, 1, 1, s, dtype=torch.bool, device="cuda")
        mask[:, ..., s - 2 :] = False
        ctx = sdpa_kernel(backends) if backends else nullcontext()
        with ctx:
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1000 / calls
    return {"ms_per_call": round(ms, 3), "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}


def main() -> int:
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 1
    run([SDPBackend.MATH], calls=5)  # CUDA context and allocator warm-up
    run(None, calls=3, seed=9)  # loads cuDNN once, so its one-off start-up is not counted
    no_cudnn = run([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], seed=1)
    default = run(None, seed=2)
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "default": default, "without_cudnn": no_cudnn}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
