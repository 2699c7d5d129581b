"""The training loss's speed: ours (``nmt.loss``) against PyTorch's ``F.cross_entropy``.

    python bench/loss_speed.py                          # (2875, 8000): one CPU batch of 3,000 tokens
    python bench/loss_speed.py --rows 24000 --device cuda

Two tables, each timed in one process, alternating, median of ``--repeats``:

1. the loss alone: forward + backward of label-smoothed cross-entropy (eps 0.1, 5% padding rows)
   over ``(rows, vocab)`` logits. Ours computes one softmax in all; ``F.cross_entropy`` takes a
   log-softmax forward and a backward through it. Prints ours / theirs.
2. the output layer and the loss: hidden ``(rows, --dim)`` times the ``(vocab, dim)`` output matrix,
   then the loss, forward + backward (gradients for both). ``logits``: ``F.linear`` then
   ``label_smoothed_nll`` (what training does on CUDA); ``chunked``: ``linear_label_smoothed_nll``
   (what it does on a CPU: a few hundred rows at a time, padding rows skipped); ``torch``:
   ``F.linear`` then ``F.cross_entropy``. Prints chunked / logits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sync, table, write_json  # noqa: E402


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def measure(rows: int, vocab: int, dtype: str, device_name: str, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from nmt.loss import label_smoothed_nll
    from nmt.vocab import PAD_ID

    device = torch.device(device_name)
    g = torch.Generator(device=device).manual_seed(0)
    logits = (3 * torch.randn(rows, vocab, generator=g, device=device)).to(getattr(torch, dtype))
    target = torch.randint(PAD_ID + 1, vocab, (rows,), generator=g, device=device)
    target[: rows // 20] = PAD_ID  # 5% padding, as in length-bucketed batches

    def ours():
        x = logits.clone().requires_grad_()
        label_smoothed_nll(x[None], target[None], 0.1)[0].backward()

    def theirs():
        x = logits.clone().requires_grad_()
        F.cross_entropy(x.float(), target, ignore_index=PAD_ID, label_smoothing=0.1, reduction="sum").backward()

    def clone_only():  # the clone both make, subtracted from both
        logits.clone().requires_grad_()

    times = {"ours": [], "theirs": [], "clone": []}
    for i in range(repeats + 2):
        for name, fn in (("ours", ours), ("theirs", theirs), ("clone", clone_only)):
            t = timed(fn, device)
            if i >= 2:  # warm-up
                times[name].append(t)
    clone = statistics.median(times["clone"])
    ours_ms = (statistics.median(times["ours"]) - clone) * 1e3
    theirs_ms = (statistics.median(times["theirs"]) - clone) * 1e3
    return {"device": device_name, "dtype": dtype, "rows": rows, "vocab": vocab, "repeats": repeats,
            "ours_ms": ours_ms, "cross_entropy_ms": theirs_ms, "ours_over_theirs": ours_ms / theirs_ms}


def measure_output_layer(rows: int, vocab: int, dim: int, dtype: str, device_name: str, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from nmt.loss import CHUNK_ELEMENTS, label_smoothed_nll, linear_label_smoothed_nll
    from nmt.vocab import PAD_ID

    device = torch.device(device_name)
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(rows, dim, generator=g, device=device).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=g, device=device) / dim**0.5).requires_grad_()
    target = torch.randint(PAD_ID + 1, vocab, (rows,), generator=g, device=device)
    target[: rows // 20] = PAD_ID
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def logits_path():
        with amp:
            loss = label_smoothed_nll(F.linear(hidden, weight)[None], target[None], 0.1)[0]
        loss.backward()

    def chunked():
        with amp:
            loss = linear_label_smoothed_nll(hidden[None], weight, target[None], 0.1)[0]
        loss.backward()

    def torch_path():
        with amp:
            x = F.linear(hidden, weight)
        F.cross_entropy(x.float(), target, ignore_index=PAD_ID, label_smoothing=0.1, reduction="sum").backward()

    fns = {"logits": logits_path, "chunked": chunked, "torch": torch_path}
    times = {name: [] for name in fns}
    for i in range(repeats + 2):
        for name, fn in fns.items():
            hidden.grad = weight.grad = None
            t = timed(fn, device)
            if i >= 2:
                times[name].append(t)
    ms = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    return {"device": device_name, "dtype": dtype, "rows": rows, "dim": dim, "vocab": vocab,
            "chunk_rows": max(1, CHUNK_ELEMENTS // vocab), "repeats": repeats, "logits_ms": ms["logits"],
            "chunked_ms": ms["chunked"], "torch_ms": ms["torch"], "chunked_over_logits": ms["chunked"] / ms["logits"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2875)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dim", type=int, default=256, help="the output layer's input size")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default="bench/results/loss_speed.json")
    args = ap.parse_args()
    rows = [measure(args.rows, args.vocab, d, args.device, args.repeats) for d in args.dtypes]
    print(table(rows, ["device", "dtype", "rows", "vocab", "ours_ms", "cross_entropy_ms", "ours_over_theirs"]))
    layer = [measure_output_layer(args.rows, args.vocab, args.dim, d, args.device, args.repeats) for d in args.dtypes]
    print(table(layer, ["device", "dtype", "rows", "dim", "vocab", "chunk_rows", "logits_ms", "chunked_ms", "torch_ms",
                        "chunked_over_logits"]))
    write_json(args.out, {"loss": rows, "output_layer_and_loss": layer})
    return 0


if __name__ == "__main__":
    sys.exit(main())
