"""Ablation over the LSTM attention switches: same data, same budget, one row per setting.

    python bench/ablation.py --data prepared/de-en --minutes 8 --threads 1
    python bench/ablation.py --data prepared/de-en --minutes 20 --grid full     # 32 runs: score x position x feeding x heads

Each setting trains ``configs/lstm-luong.toml`` with the switches overridden for ``--minutes`` of
wall-clock time, then translates test_2016_flickr with beam 5. Reports test BLEU, valid BLEU,
mean training target tokens/s and parameters; writes JSON and a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
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


def full_grid() -> list[dict]:
    keys = ("score", "attention_position", "input_feeding", "heads")
    values = (["dot", "general", "mlp", "scaled_dot"], ["after", "before"], [True, False], [1, 4])
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def toml_value(v) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v).lower()


def run(setting: dict, args) -> dict:
    name = "-".join(f"{v}" for v in setting.values())
    out = Path(args.runs) / name
    sets = [f"model.{k}={toml_value(v)}" for k, v in setting.items()] + [
        f'data.dir="{args.data}"', f"train.max_minutes={args.minutes}", f"train.threads={args.threads}",
        "train.valid_every=100000", "train.save_every=0", "train.valid_max_sentences=300"]
    cmd = [sys.executable, "-m", "nmt_cli.main", "train", "-c", "configs/lstm-luong.toml", "-o", str(out)]
    subprocess.run(cmd + [a for s in sets for a in ("--set", s)], check=True, capture_output=True)
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tgt_tok_s"] for r in records if r["kind"] == "train"][1:]
    valid = [r for r in records if r["kind"] == "valid"][-1]
    ev = subprocess.run([sys.executable, "-m", "nmt_cli.main", "evaluate", "-m", str(out / "best.pt"), "--src",
                         f"{args.data}/test.src", "--ref", f"{args.data}/test.ref", "--json"],
                        check=True, capture_output=True, text=True)
    info = subprocess.run([sys.executable, "-m", "nmt_cli.main", "info", str(out / "best.pt")], capture_output=True,
                          text=True).stdout
    params = int(info.split("lstm, ")[1].split(" parameters")[0].replace(",", ""))
    return {**setting, "test_bleu": json.loads(ev.stdout)["bleu"]["score"], "valid_bleu": valid.get("bleu"),
            "tgt_tok_s": sum(speeds) / max(len(speeds), 1), "params": params, "updates": valid["step"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="prepared/de-en")
    ap.add_argument("--minutes", type=float, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--grid", choices=["small", "full"], default="small")
    ap.add_argument("--runs", default="runs/ablation")
    ap.add_argument("--out", default="bench/results/ablation.json")
    args = ap.parse_args()
    rows = []
    for setting in SMALL if args.grid == "small" else full_grid():
        rows.append(run(setting, args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        write_json(args.out, {"minutes": args.minutes, "threads": args.threads, "rows": rows})
    print(table(rows, ["score", "attention_position", "input_feeding", "heads", "test_bleu", "valid_bleu",
                       "tgt_tok_s", "params", "updates"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
