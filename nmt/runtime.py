"""What a training run needs from its process: stop requests from signals, the RNG state that an
exact resume restores, and the peak memory for the log."""

from __future__ import annotations

import os
import random
import signal
import sys

import torch


class Stop:
    """Turns the first SIGINT/SIGTERM into a request to save and stop; a second one exits at once."""

    def __init__(self):
        self.requested = False
        self.signum = 0  # the signal that asked (the command's exit status is then 128 + signum)
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Handle SIGINT and SIGTERM until :meth:`uninstall` (the main thread only)."""
        def handler(signum, frame):
            if self.requested:
                print("\nsecond interrupt: exiting without saving", file=sys.stderr)
                os._exit(130)
            self.requested, self.signum = True, signum
            print("\ninterrupt: saving last.pt after this update (press Ctrl-C again to quit now)", file=sys.stderr)

        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, handler)

    def uninstall(self) -> None:
        """Put back the handlers that were there before :meth:`install` (a program that trains, then
        goes on, gets its Ctrl-C back)."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
