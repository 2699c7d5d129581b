"""nmt: neural machine translation from raw parallel text to BLEU, in four commands.

\b
    nmt prepare  --corpus multi30k --src-lang de --tgt-lang en -o prepared/de-en
    nmt train    -c configs/transformer.toml -o runs/de-en
    nmt translate -m runs/de-en/best.pt < input.de > output.en
    nmt evaluate --hyp output.en --ref reference.en
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from nmt import __version__
from nmt_cli import common
from nmt_cli.attention import attention
from nmt_cli.average import average
from nmt_cli.evaluate import evaluate
from nmt_cli.info import info
from nmt_cli.prepare import prepare
from nmt_cli.quickstart import quickstart
from nmt_cli.train import train
from nmt_cli.translate import translate

app = typer.Typer(
    name="nmt",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nmt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Neural machine translation: prepare, train, translate, evaluate."""
    from nmt.memory import keep_freed_memory

    common.VERBOSE["on"] = verbose
    # reuse freed pages for large tensors (+20% Transformer training on CPU); the commands that decode many
    # batches on several threads also share one malloc arena (training keeps glibc's: nmt/memory.py)
    keep_freed_memory(one_arena=ctx.invoked_subcommand in ("translate", "evaluate"))


for command in (prepare, train, translate, evaluate, info, average, attention, quickstart):
    app.command(no_args_is_help=command.__name__ not in ("translate", "quickstart"))(command)


def run() -> None:
    """Console-script entry point.

    A command that succeeded and set ``common.SKIP_TEARDOWN`` (``nmt translate``, once its output
    is flushed and closed) ends the process with ``os._exit``: the interpreter's teardown of torch
    takes 0.5-0.65 s on the 2-core CPU, a fifth of a one-line translation, and has nothing left to do.
    Tests drive ``app`` through CliRunner and never reach this."""
    common.SKIP_TEARDOWN["on"] = False
    try:
        app()
    except SystemExit as e:
        if common.SKIP_TEARDOWN["on"] and e.code in (0, None):
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except (OSError, ValueError):  # a closed pipe or a full disk: the usual exit reports it
                raise e from None
            os._exit(0)
        raise


if __name__ == "__main__":
    run()
