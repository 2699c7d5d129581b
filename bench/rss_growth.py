"""Resident memory over a long training run: does it settle, or grow with every batch?

    python bench/rss_growth.py --data prepared/de-en --updates 500              # fp32 and bf16
    python bench/rss_growth.py --models lstm --amp bf16 --updates 2000 --every 100

Trains each (model, precision) in a fresh process, as ``nmt train`` does (same config, batches
cycling over epochs, no validation), and records the resident set (current and peak, MiB) every
``--every`` updates. A 100-update throughput benchmark cannot see a leak of a few MB an update;
this found one: the bf16 loss's unpadded products, 3.04 GB at 500 Transformer updates against
1.16 GB padded (docs/performance.md). Prints a table with the growth from the first record to the last and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, table, usable_amps, write_json  # noqa: E402

CONFIGS = {"transformer": "configs/transformer.toml", "lstm": "configs/lstm-luong.toml"}


def current_rss_mb() -> float:
    """This process's resident set now (Linux), in MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def child(model: str, amp: str, data: str, updates: int, every: int, sets: list[str]) -> list[dict]:
    """Train ``updates`` updates in this process; the RSS every ``every`` updates."""
    from nmt.config import load_config
    from nmt.data import epoch_batches
    from nmt.memory import keep_freed_memory
    from nmt.train import Trainer

    keep_freed_memory()  # as nmt train
    cfg = load_config(Path(CONFIGS[model]), [f'data.dir="{data}"', f'train.amp="{amp}"', *sets])
    tr = Trainer(cfg, Path("/tmp/nmt-bench-unused"), log=lambda m: None)
    records, done, epoch, start = [], 0, 0, time.perf_counter()
    while done < updates:
        for batch in epoch_batches(tr.train_data, cfg.train.batch_tokens, seed=cfg.train.seed, epoch=epoch):
            tr.update([tr.train_data.collate(batch)])
            done += 1
            if done % every == 0:
                records.append({"update": done, "rss_mb": round(current_rss_mb(), 1), "peak_rss_mb": round(peak_rss_mb(), 1),
                                "seconds": round(time.perf_counter() - start, 1)})
            if done == updates:
                break
        epoch += 1
    return records


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="prepared/de-en")
    p.add_argument("--models", nargs="+", default=["transformer"], choices=sorted(CONFIGS))
    p.add_argument("--amp", nargs="+", default=["none", "bf16"])
    p.add_argument("--updates", type=int, default=500)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config setting, as nmt train --set")
    p.add_argument("--out", default="bench/results/rss_growth.json")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "AMP"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.data, args.updates, args.every, args.set)))
        return 0
    rows, curves = [], {}
    for model in args.models:
        for amp in usable_amps(args.amp):
            cmd = [sys.executable, __file__, "--child", model, amp, "--data", args.data,
                   "--updates", str(args.updates), "--every", str(args.every), *(a for s in args.set for a in ("--set", s))]
            records = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            curves[f"{model}/{amp}"] = records
            first, last = records[0], records[-1]
            rows.append({"model": model, "precision": amp, "first_update": first["update"], "first_rss_mb": first["rss_mb"],
                         "last_update": last["update"], "last_rss_mb": last["rss_mb"], "peak_rss_mb": last["peak_rss_mb"],
                         "mb_per_100_updates": round(100 * (last["rss_mb"] - first["rss_mb"]) / max(1, last["update"] - first["update"]), 1)})
            print(f"{model} {amp}: " + " ".join(f"{r['update']}:{r['rss_mb']:.0f}" for r in records), file=sys.stderr)
    print(table(rows, list(rows[0])))
    write_json(args.out, {"rows": rows, "curves": curves})
    return 0


if __name__ == "__main__":
    sys.exit(main())
