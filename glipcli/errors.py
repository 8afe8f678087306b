"""The one exception type users see: a clear, one-line message naming the problem."""


class GlipError(Exception):
    """A user-facing error (bad input, bad file, bad checkpoint). The CLI prints its message
    on one line and exits with a non-zero status; it never shows a traceback for these."""
