"""Training tokens/s with the chunked output-layer loss on and off, alternating in one process.

    python bench/output_loss_ab.py --model transformer --rounds 8 --updates 8

Builds the trainer of ``configs/<model>`` once, then alternates rounds of ``--updates`` timed
updates (after 2 untimed ones) with ``nmt.loss.fuse_output_projection`` as shipped (chunked on a
CPU) and forced off (logits path); the same batches every round. Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402
from train_throughput import CONFIGS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(CONFIGS), default="transformer")
    ap.add_argument("--data", default="prepared/de-en")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--updates", type=int, default=8)
    ap.add_argument("--out", default="bench/results/output_loss_ab.json")
    args = ap.parse_args()

    import nmt.train
    from nmt.config import load_config
    from nmt.data import epoch_batches
    from nmt.loss import fuse_output_projection

    cfg = load_config(Path(CONFIGS[args.model]), [f'data.dir="{args.data}"', "train.threads=0"])
    tr = nmt.train.Trainer(cfg, Path("/tmp/nmt-bench-unused"), log=lambda m: None)
    batches = epoch_batches(tr.train_data, cfg.train.batch_tokens, seed=1, epoch=0)
    groups = [[tr.train_data.collate(b)] for b in batches[: 2 + args.updates]]
    modes = {"chunked": fuse_output_projection, "logits": lambda device: False}
    tok_s: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(args.rounds):
        for name in list(modes) if r % 2 == 0 else list(modes)[::-1]:
            nmt.train.fuse_output_projection = modes[name]
            for g in groups[:2]:
                tr.update(g)
            tokens, t0 = 0, time.perf_counter()
            for g in groups[2:]:
                tokens += tr.update(g)[2]
            tok_s[name].append(tokens / (time.perf_counter() - t0))
        print(r, {k: round(v[-1]) for k, v in tok_s.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in tok_s.items()}
    print(f"{args.model}: median target tokens/s chunked {med['chunked']:,.0f}, logits {med['logits']:,.0f}, "
          f"ratio {med['chunked'] / med['logits']:.3f}")
    write_json(args.out, {"model": args.model, "rounds": tok_s, "median": med})
    return 0


if __name__ == "__main__":
    sys.exit(main())
