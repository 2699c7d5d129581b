from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nmt_cli.common import err, guard


def average(
    checkpoints: Annotated[list[Path], typer.Argument(
        exists=True, dir_okay=False, readable=True, metavar="CKPT",
        help="Checkpoints of one model, e.g. the step-*.pt of a run.")],
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="The averaged checkpoint to write.")],
) -> None:
    """Average the weights of checkpoints of one model into one checkpoint (no training state).

    Keep a run's last validations with `--set train.keep_checkpoints=N`, then average them; the
    result translates like best.pt. At the end of a long run it is often a little better (Vaswani
    et al. 2017); averaged while a run still improves fast, it is worse (docs/performance.md).

    \b
        nmt average runs/de-en/step-*.pt -o runs/de-en/average.pt
    """
    from nmt.average import average_checkpoints
    from nmt.checkpoint import atomic_save
    from nmt.errors import NmtError

    with guard():
        if same := next((c for c in checkpoints if c.resolve() == out.resolve()), None):
            raise NmtError(f"-o {out} is the same file as the input {same}; write the average to its own file")
        ckpt = average_checkpoints(checkpoints)
        atomic_save(ckpt, out)
        steps = [s for s in ckpt["meta"]["averaged_steps"] if s is not None]
        updates = f" (updates {', '.join(map(str, steps))})" if steps else ""
        err(f"averaged {len(checkpoints)} checkpoint(s){updates} -> {out}")
