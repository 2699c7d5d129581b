from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from nmt_cli.common import guard


def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: best.pt, last.pt, metrics.jsonl, config.json.")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", exists=True, dir_okay=False, readable=True,
                                                   help="A TOML config (see configs/).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Prepared data folder (overrides data.dir).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a key: section.key=value (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt (model, optimizer, schedule, RNG, data "
                                              "position); without -c, with the run's own OUT/config.json.")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or auto (overrides train.device).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start a new run in OUT even though it holds one (its checkpoints, "
                                                 "snapshots and metrics are deleted first).")] = False,
) -> None:
    """Train a model on a prepared folder; writes best.pt (by valid BLEU) and last.pt.

    \b
        nmt train -c configs/transformer.toml -d prepared/de-en -o runs/de-en
        nmt train -c configs/transformer.toml -o runs/de-en --set train.max_minutes=20 --set model.dropout=0.3
        nmt train -o runs/de-en --resume                  # the run's own config (runs/de-en/config.json)
        nmt train -o runs/de-en --resume --set train.max_minutes=120

    On several GPUs (or CPU processes): torchrun --nproc_per_node 4 -m nmt_cli.main train ...
    """
    from nmt.config import load_config
    from nmt.errors import NmtError
    from nmt.paths import check_out_folder
    from nmt.run_files import refuse_earlier_run
    from nmt.train import train as run

    with guard():
        check_out_folder(out, "-o")
        refuse_earlier_run(out, resume, overwrite)
        overrides = list(set_ or [])
        if data is not None:  # a JSON string is a valid TOML string: quotes and backslashes escaped
            overrides.append(f"data.dir={json.dumps(str(data), ensure_ascii=False)}")
        if device is not None:
            overrides.append(f"train.device={json.dumps(device, ensure_ascii=False)}")
        if resume and config is None:  # the run's own settings; --set still overrides them
            config = out / "config.json"
            if not config.exists():
                raise NmtError(f"{config} not found: nothing to resume there, or give -c with the run's settings")
        result = run(load_config(config, overrides), out, resume=resume)
    if result["reason"] == "interrupted":  # saved and resumable, not finished: 130 (SIGINT) / 143 (SIGTERM)
        raise typer.Exit(128 + (result["signal"] or 2))  # no signal here: another torchrun rank got it
