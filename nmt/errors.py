"""The one exception type for user-facing errors.

Anything the user can fix (a missing file, a bad config key, a foreign checkpoint) raises
:class:`NmtError` with a one-line message naming the file and the fix; the CLI prints it
without a traceback and exits non-zero.
"""


class NmtError(Exception):
    """A user-facing error: one line, names what is wrong and how to fix it."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (some, like load_state_dict's, run to many lines)."""
    return (str(e).strip().splitlines() or [""])[0]
