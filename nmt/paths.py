"""Output folders checked before any work starts, without creating anything.

A command that writes a folder at its end (``nmt prepare -o``, ``nmt translate --attention``,
``nmt train -o``) calls :func:`check_out_folder` first, so that a file in the way or an unwritable
parent is a one-line error before hours of work, and a refused command leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from nmt.errors import NmtError


def check_out_folder(path: Path, option: str) -> None:
    """``path`` is a writable folder, or one that can be made (its nearest existing ancestor is a
    writable folder); else :class:`NmtError` naming ``option``. Nothing is created."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise NmtError(f"{option} {path}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise NmtError(f"{option} {path}: the folder is not writable")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NmtError(f"{option} {path}: cannot be made, {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NmtError(f"{option} {path}: cannot be made, {parent} is not writable")


def make_folder(path: Path, option: str) -> None:
    """``mkdir -p path``, an OS refusal (a read-only file system) as a one-line :class:`NmtError`."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NmtError(f"{option} {path}: cannot make the folder ({e.strerror})") from None
