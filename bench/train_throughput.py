"""Training throughput: steady-state target tokens/s, peak RSS and model FLOPs utilisation.

    python bench/train_throughput.py --data prepared/de-en                 # Transformer + LSTM, fp32 + bf16
    python bench/train_throughput.py --data prepared/de-en --models transformer --amp none --updates 30
    python bench/train_throughput.py --models transformer --amp none --variant "" --variant train.agreement=1.0

Each (model, amp) pair runs in its own subprocess (so peak RSS is its own): it times ``--updates``
real updates of the training loop (``Trainer.update``) after ``--warmup`` untimed ones, on the
Multi30k batches of the configs in ``configs/``. Each ``--variant`` (comma-separated config
settings, as ``nmt train --set``) is a row of its own, so that a switch's cost is measured in the
same command as the baseline (the empty variant). MFU = achieved training FLOP/s / the fp32 GEMM
peak measured in the same process (a 2048^3 matmul loop; on a CPU the faster of torch's matmul, i.e.
its BLAS, and oneDNN's product, which ``nmt.onednn`` trains with: on the AMD EPYC with AVX-512, 210
against 463 GFLOP/s on two threads); FLOPs are counted by ``torch.utils.flop_counter`` on one real
update (forward + backward) with plain ``nn.Linear`` layers (the model's FLOPs, without the rows
``nmt.onednn`` pads).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, sync, table, usable_amps, write_json  # noqa: E402

CONFIGS = {"transformer": "configs/transformer.toml", "lstm": "configs/lstm-luong.toml"}


def gemm_peak(device, dtype, seconds: float = 3.0) -> float:
    """FLOP/s of a 2048^3 (CPU) or 8192^3 (CUDA) matmul loop on ``device`` in ``dtype``; on a CPU
    in fp32 the larger of torch's matmul and oneDNN's product (each timed for ``seconds``)."""
    import torch

    from nmt.onednn import onednn_linear, onednn_usable

    n_dim = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n_dim, n_dim, device=device, dtype=dtype)
    b = torch.randn(n_dim, n_dim, device=device, dtype=dtype)
    products = [lambda: a @ b]
    if device.type == "cpu" and dtype == torch.float32 and onednn_usable():
        products.append(lambda: onednn_linear(a, b, None))
    best = 0.0
    for product in products:
        product()
        sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            product()
            n += 1
            if n % 10 == 0:
                sync(device)
        sync(device)
        best = max(best, 2 * n_dim**3 * n / (time.perf_counter() - t0))
    return best


@contextmanager
def plain_linears(*models):
    """The models' ``nmt.onednn`` layers as plain ``nn.Linear``, and the loss's products torch's
    (``NMT_ONEDNN=0``), while the block runs: FLOP counting sees only torch's operators."""
    import os

    from torch import nn

    from nmt.onednn import OneDnnLinear

    swapped = [m for model in filter(None, models) for m in model.modules() if type(m) is OneDnnLinear]
    for m in swapped:
        m.__class__ = nn.Linear
    before = os.environ.get("NMT_ONEDNN")
    os.environ["NMT_ONEDNN"] = "0"
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = OneDnnLinear
        if before is None:
            del os.environ["NMT_ONEDNN"]
        else:
            os.environ["NMT_ONEDNN"] = before


def count_lstm_layer_flops() -> None:
    """Teach ``FlopCounterMode`` the oneDNN LSTM layers (it counts none of their FLOPs otherwise).

    Per layer call with input rows ``R`` (time x batch), ``W_ih (4H, I)`` and ``W_hh (4H, H)``: the
    forward's gate products are ``2 R (|W_ih| + |W_hh|)`` FLOPs; the backward's are twice that
    (gradients of the inputs and states, and of the weights)."""
    from math import prod

    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    aten = torch.ops.aten
    if aten.mkldnn_rnn_layer in flop_registry:
        return

    @register_flop_formula(aten.mkldnn_rnn_layer)
    def forward(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
        return 2 * prod(input_shape[:-1]) * (prod(w_ih) + prod(w_hh))

    @register_flop_formula(aten.mkldnn_rnn_layer_backward)
    def backward(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
        return 4 * prod(input_shape[:-1]) * (prod(w_ih) + prod(w_hh))


def one(model: str, amp: str, data: str, warmup: int, updates: int, threads: int, batch_tokens: int,
        variant: str = "") -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nmt.config import load_config
    from nmt.data import epoch_batches
    from nmt.memory import keep_freed_memory
    from nmt.train import Trainer

    keep_freed_memory()  # as nmt train does (NMT_KEEP_FREED_MEMORY=0 measures without it)
    if threads:
        torch.set_num_threads(threads)
    sets = [f'data.dir="{data}"', f'train.amp="{amp}"', "train.threads=0", *filter(None, variant.split(","))]
    cfg = load_config(Path(CONFIGS[model]), sets + ([f"train.batch_tokens={batch_tokens}"] if batch_tokens else []))
    tr = Trainer(cfg, Path("/tmp/nmt-bench-unused"), log=lambda m: None)
    batches = epoch_batches(tr.train_data, cfg.train.batch_tokens, seed=1, epoch=0)
    groups = [[tr.train_data.collate(b)] for b in batches[: warmup + updates + 1]]
    count_lstm_layer_flops()
    with FlopCounterMode(display=False) as counter, plain_linears(tr.model, tr.reverse):
        tr.update(groups[0])
    flops_per_token = counter.get_total_flops() / groups[0][0].target_tokens
    for g in groups[1 : warmup + 1]:
        tr.update(g)
    sync(tr.device)
    tokens, t0 = 0, time.perf_counter()
    for g in groups[warmup + 1 :]:
        tokens += tr.update(g)[2]
    sync(tr.device)
    seconds = time.perf_counter() - t0
    tok_s = tokens / seconds
    # fp32 peak (TF32 off, as in training) is the MFU reference; a bf16 run is also compared with the bf16 peak
    peak = gemm_peak(tr.device, torch.float32)
    extra = {}
    if tr.device.type == "cuda":
        extra["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        extra["device"] = torch.cuda.get_device_name()
    if amp == "bf16":
        extra["mfu_vs_bf16_peak"] = flops_per_token * tok_s / gemm_peak(tr.device, torch.bfloat16)
    return {**extra, "model": model, "amp": amp, "variant": variant, "threads": torch.get_num_threads(),
            "batch_tokens": cfg.train.batch_tokens,
            "params": sum(p.numel() for p in tr.model.parameters()), "updates": updates,
            "tgt_tok_s": tok_s, "train_gflop_s": flops_per_token * tok_s / 1e9,
            "gemm_peak_gflop_s": peak / 1e9, "mfu": flops_per_token * tok_s / peak, "peak_rss_mb": peak_rss_mb(), **extra}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="prepared/de-en")
    ap.add_argument("--models", nargs="+", default=["transformer", "lstm"], choices=list(CONFIGS))
    ap.add_argument("--amp", nargs="+", default=["none", "bf16"])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-tokens", type=int, default=0, help="override train.batch_tokens (0 = the config's)")
    ap.add_argument("--out", default="bench/results/train_throughput.json")
    ap.add_argument("--variant", action="append", help="comma-separated settings, e.g. train.agreement=1.0; "
                                                         "repeat it for several rows (\"\" = the config as it is)")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "AMP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    variants = args.variant or [""]
    if args.one:
        print(json.dumps(one(*args.one, args.data, args.warmup, args.updates, args.threads, args.batch_tokens,
                             variants[0])))
        return 0
    rows, amps = [], usable_amps(args.amp)
    if not amps:
        ap.error("nothing to measure: add --amp none")
    for model in args.models:
        for amp in amps:
            for variant in variants:
                cmd = [sys.executable, __file__, "--one", model, amp, "--data", args.data, "--warmup",
                       str(args.warmup), "--updates", str(args.updates), "--threads", str(args.threads),
                       "--batch-tokens", str(args.batch_tokens), "--variant", variant]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                rows.append(json.loads(out))
                print(json.dumps(rows[-1]), file=sys.stderr)
    print(table(rows, ["model", "amp", "variant", "threads", "batch_tokens", "params", "tgt_tok_s", "train_gflop_s",
                       "gemm_peak_gflop_s", "mfu", "peak_rss_mb"] + (["peak_gpu_mem_mb"] if "device" in rows[0] else [])))
    write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
