"""What every command shares: the error guard and the --verbose switch."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import typer

from nmt.errors import NmtError

VERBOSE = {"on": False}


def err(message: str) -> None:
    typer.echo(message, err=True)


@contextmanager
def guard():
    """Turn a user error into one line on stderr and exit status 1 (a traceback only with --verbose)."""
    try:
        yield
    except NmtError as e:
        if VERBOSE["on"]:
            raise
        err(f"nmt: error: {e}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err("nmt: interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        sys.stderr.close()
        raise typer.Exit(1) from None
