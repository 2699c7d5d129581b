"""Ablation over the LSTM attention switches: same data, same budget, one row per setting.

    python bench/ablation.py --data prepared/de-en --minutes 10                 # 8 settings, 2 at a time
    python bench/ablation.py --data prepared/de-en --minutes 20 --grid full     # 32 runs: score x position x feeding x heads
    python bench/ablation.py --data prepared/de-en --minutes 10 --grid family   # the attention family (issue 5)

Each setting trains ``configs/lstm-luong.toml`` with the switches overridden for ``--minutes`` of
wall-clock time, then translates test_2016_flickr with beam 5 (bench/quality.py). Reports test BLEU, chrF, the
repetition / under-translation / copy rates, mean training target tokens/s and parameters;
writes JSON and a Markdown table. Runs that train the same model share one folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_json  # noqa: E402

SMALL = [  # one switch at a time away from the Luong baseline, plus the Bahdanau corner
    {"score": "general", "attention_position": "after", "input_feeding": True, "heads": 1},
    {"score": "dot", "attention_position": "after", "input_feeding": True, "heads": 1},
    {"score": "mlp", "attention_position": "after", "input_feeding": True, "heads": 1},
    {"score": "scaled_dot", "attention_position": "after", "input_feeding": True, "heads": 1},
    {"score": "general", "attention_position": "after", "input_feeding": False, "heads": 1},
    {"score": "general", "attention_position": "after", "input_feeding": True, "heads": 4},
    {"score": "general", "attention_position": "before", "input_feeding": True, "heads": 1},
    {"score": "mlp", "attention_position": "before", "input_feeding": False, "heads": 1},
]
BASELINE = SMALL[0]

# The attention family (issue 5): each switch added to the same baseline. "decode" rows reuse the
# baseline's model and change only the search.
FAMILY = {
    "baseline": {},
    "coverage-score": {"model.coverage": True},
    "coverage-loss": {"train.coverage_loss": 1.0},
    "coverage-penalty": {"decode.coverage_penalty": 0.2},
    "coverage-all": {"model.coverage": True, "train.coverage_loss": 1.0, "decode.coverage_penalty": 0.2},
    "location": {"model.location_filters": 8},
    "local-p": {"model.local": "p"},
    "monotonic": {"model.monotonic": True},
    "hard": {"model.hard": "reinforce"},
    "copy": {"model.copy": True},
}


def ablation_settings(grid: str) -> dict[str, dict]:
    """name -> {dotted key: value}; the names double as run folder names."""
    if grid == "family":
        return {name: {**{f"model.{k}": v for k, v in BASELINE.items()}, **sets} for name, sets in FAMILY.items()}
    combos = SMALL
    if grid == "full":
        keys = ("score", "attention_position", "input_feeding", "heads")
        values = (["dot", "general", "mlp", "scaled_dot"], ["after", "before"], [True, False], [1, 4])
        combos = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    return {"-".join(str(v) for v in c.values()): {f"model.{k}": v for k, v in c.items()} for c in combos}


def toml_value(v) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v).lower()


def run_dir(name: str, setting: dict, args) -> Path:
    """Runs that train the same model share a folder (decode-only rows reuse the model)."""
    trained = {k: v for k, v in setting.items() if not k.startswith("decode.")}
    base = {f"model.{k}": v for k, v in BASELINE.items()}
    return Path(args.runs) / ("general-after-True-1" if trained == base else name)


_LOCKS: dict[Path, threading.Lock] = defaultdict(threading.Lock)  # one trainer per run folder


def train(out: Path, setting: dict, args, env: dict) -> None:
    with _LOCKS[out]:
        if not (out / "done").exists():  # trained earlier (or by a row sharing the folder): reuse
            _train(out, setting, args, env)


def _train(out: Path, setting: dict, args, env: dict) -> None:
    sets = [f"{k}={toml_value(v)}" for k, v in setting.items() if not k.startswith("decode.")] + [
        f'data.dir="{args.data}"', f"train.max_minutes={args.minutes}", f"train.threads={args.threads}",
        f"train.batch_tokens={args.batch_tokens}", f"train.warmup={args.warmup}",
        "train.valid_every=100000", "train.save_every=0", "train.valid_max_sentences=300"]
    cmd = [sys.executable, "-m", "nmt_cli.main", "train", "-c", "configs/lstm-luong.toml", "-o", str(out),
           "--overwrite"]  # no "done" marker: an interrupted run, trained again from the start
    proc = subprocess.run(cmd + [a for s in sets for a in ("--set", s)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{out}: training failed: {proc.stderr.strip().splitlines()[-1:]}")
    (out / "done").write_text(json.dumps({"minutes": args.minutes}) + "\n")


def run(name: str, setting: dict, args) -> dict:
    out = run_dir(name, setting, args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or os.cpu_count())}
    train(out, setting, args, env)
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tgt_tok_s"] for r in records if r["kind"] == "train"][1:]
    valid = [r for r in records if r["kind"] == "valid"][-1]
    quality = subprocess.run([sys.executable, "bench/quality.py", "-m", str(out / "best.pt"), "--src",
                              f"{args.data}/test.src", "--ref", f"{args.data}/test.ref",
                              "--coverage-penalty", str(setting.get("decode.coverage_penalty", 0.0))],
                             check=True, capture_output=True, text=True, env=env)
    info = subprocess.run([sys.executable, "-m", "nmt_cli.main", "info", str(out / "best.pt")], capture_output=True,
                          text=True, env=env).stdout
    params = int(info.split("lstm, ")[1].split(" parameters")[0].replace(",", ""))
    q = json.loads(quality.stdout)
    return {"name": name, **{k.split(".")[-1]: v for k, v in setting.items()}, "test_bleu": q["bleu"],
            "chrf": q["chrf"], "repetition_pct": 100 * q["repetition"],
            "under_translation_pct": 100 * q["under_translation"], "copy_pct": 100 * q["copy_rate"],
            "valid_bleu": valid.get("bleu"), "tgt_tok_s": sum(speeds) / max(len(speeds), 1), "params": params,
            "updates": valid["step"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="prepared/de-en")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (jobs x threads <= cores)")
    ap.add_argument("--batch-tokens", type=int, default=1500)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--grid", choices=["small", "full", "family"], default="small")
    ap.add_argument("--only", nargs="*", help="run only these setting names")
    ap.add_argument("--runs", default="runs/ablation")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/<grid>.json)")
    args = ap.parse_args()
    settings = ablation_settings(args.grid)
    if args.only:
        settings = {k: v for k, v in settings.items() if k in args.only}
    out = args.out or f"bench/results/{'ablation' if args.grid != 'family' else 'family'}.json"
    rows: dict[str, dict] = {}
    with ThreadPoolExecutor(args.jobs) as pool:  # threads only wait on subprocesses
        futures = {pool.submit(run, name, s, args): name for name, s in settings.items()}
        for fut in as_completed(futures):
            rows[futures[fut]] = fut.result()
            print(json.dumps(rows[futures[fut]]), file=sys.stderr, flush=True)
            write_json(out, {"minutes": args.minutes, "threads": args.threads, "jobs": args.jobs,
                             "batch_tokens": args.batch_tokens, "rows": [rows[n] for n in settings if n in rows]})
    ordered = [rows[n] for n in settings]
    keys = [k for k in ordered[0] if k not in ("name", "valid_bleu", "chrf")] if args.grid != "family" else \
        ["name", "test_bleu", "chrf", "repetition_pct", "under_translation_pct", "copy_pct", "tgt_tok_s", "params"]
    print(table(ordered, keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
