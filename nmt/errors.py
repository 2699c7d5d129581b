"""The one exception type for user-facing errors.

Anything the user can fix (a missing file, a bad config key, a foreign checkpoint) raises
:class:`NmtError` with a one-line message naming the file and the fix; the CLI prints it
without a traceback and exits non-zero.
"""


class NmtError(Exception):
    """A user-facing error: one line, names what is wrong and how to fix it."""
