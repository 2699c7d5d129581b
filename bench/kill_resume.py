"""Kill training with SIGKILL at random moments, resume each time, check every last.pt loads.

    python bench/kill_resume.py --data prepared/de-en --kills 10

Uses a tiny Transformer that saves last.pt every few updates. Prints one line per kill and a
final translation; exits non-zero if any last.pt fails to load or a resume fails.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["model.d_model=64", "model.heads=2", "model.ff_size=128", "model.encoder_layers=1", "model.decoder_layers=1",
        "train.batch_tokens=1000", "train.save_every=5", "train.valid_every=100000", "train.threads=1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a folder written by nmt prepare")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    base = [sys.executable, "-m", "nmt_cli.main", "train", "-d", args.data, "-o", str(out)]
    base += [a for kv in TINY + ["train.max_steps=100000"] for a in ("--set", kv)]
    from nmt.checkpoint import load_checkpoint

    steps = []
    for i in range(args.kills):
        resume = ["--resume"] if (out / "last.pt").exists() else ["--overwrite"]  # (killed before its first save)
        p = subprocess.Popen(base + resume, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 12.0))
        p.kill()  # SIGKILL: no handler runs
        p.wait()
        leftovers = [f.name for f in out.glob(".last.pt.*")]
        if (out / "last.pt").exists():
            step = load_checkpoint(out / "last.pt")["meta"]["step"]
        else:
            step = None
        steps.append(step)
        print(f"kill {i + 1}: last.pt step {step} (loads); temp files left by the killed write: {len(leftovers)}")
        if step is not None and len(steps) > 1 and steps[-2] is not None and step < steps[-2]:
            print("error: progress went backwards")
            return 1
    final = subprocess.run([sys.executable, "-m", "nmt_cli.main", "translate", "-m", str(out / "last.pt")],
                           input="Ein Hund läuft.\n", capture_output=True, text=True)
    print(f"final translate exit {final.returncode}: {final.stdout.strip()!r}")
    result = {"kills": args.kills, "steps": steps, "translate_ok": final.returncode == 0, "run": str(out)}
    print(json.dumps(result))
    return 0 if final.returncode == 0 and all(s is not None for s in steps[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
