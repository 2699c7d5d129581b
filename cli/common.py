"""What every command shares: the error guard and the --verbose switch."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager

import typer

from nmt.errors import NmtError, first_line

VERBOSE = {"on": False}
SKIP_TEARDOWN = {"on": False}  # set by a command that has written and closed all it writes (see main.run)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception by :func:`terminate_as_interrupt` so that a command
    cleans up and reports as on Ctrl-C (exit status 143 instead of 130)."""


@contextmanager
def terminate_as_interrupt():
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (elsewhere: no change)."""
    def handler(signum, frame):
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def err(message: str) -> None:
    typer.echo(message, err=True)


@contextmanager
def guard():
    """Turn a user error into one line on stderr and exit status 1 (a traceback only with --verbose);
    any other exception too, marked as an internal error."""
    try:
        yield
    except NmtError as e:
        if VERBOSE["on"]:
            raise
        err(f"nmt: error: {e}")
        raise typer.Exit(1) from None
    except Terminated:
        err("nmt: terminated")
        raise typer.Exit(143) from None
    except KeyboardInterrupt:
        err("nmt: interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        sys.stderr.close()
        raise typer.Exit(1) from None
    except Exception as e:  # anything else: still one line (the traceback with --verbose)
        if VERBOSE["on"] or type(e).__module__.split(".")[0] in ("typer", "click"):  # typer.Exit and co. pass
            raise
        first = first_line(e)
        if isinstance(e, (OSError, MemoryError)) or type(e).__name__ == "OutOfMemoryError":  # the machine's
            err(f"nmt: error: {first or type(e).__name__}")  # e.g. disk full, permission denied, CUDA out of memory
        else:
            err(f"nmt: internal error: {type(e).__name__}: {first} (run with --verbose for the traceback)")
        raise typer.Exit(1) from None
