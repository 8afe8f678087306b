"""The one exception type users see: a clear, one-line message naming the problem."""

from __future__ import annotations

_QUALIFIED_NAME = "glipcli.errors.GlipError: "


class GlipError(Exception):
    """A user-facing error (bad input, bad file, bad checkpoint). The CLI prints its message
    on one line and exits with a non-zero status; it never shows a traceback for these.

    A GlipError raised in a worker process comes back re-created by PyTorch's DataLoader with
    the worker's whole traceback as its message; such a message is cut back to the original one."""

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message)
        if "\nOriginal Traceback" in text and _QUALIFIED_NAME in text:
            text = text.rsplit(_QUALIFIED_NAME, 1)[1].strip()
        super().__init__(text, *args)
