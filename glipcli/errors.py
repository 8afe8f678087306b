"""The one exception type users see: a clear, one-line message naming the problem, and the one way
error messages quote what a user gave (`excerpt`)."""

from __future__ import annotations

import reprlib
from typing import Any

_QUALIFIED_NAME = "glipcli.errors.GlipError: "

MAX_MESSAGE_CHARS = 1000  # a longer message is cut: an error is one readable line, whatever it quotes
EXCERPT_CHARS = 80  # what `excerpt` shows of one value

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = EXCERPT_CHARS
_REPR.maxother = EXCERPT_CHARS
_REPR.maxlong = 40
for _name in ("maxdict", "maxlist", "maxtuple", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_REPR, _name, 6)


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A bounded `repr` of a user's value for an error message: at most `limit` characters, and
    computed in bounded time whatever the value is (a structure with millions of shared entries,
    a megabyte-long string, a huge integer): nested containers show a few entries and `...`.

    Every message quoting a value read from a user's file or option goes through this (instead of
    `{value!r}`); for short plain values the result is exactly `repr(value)`."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a value whose repr fails (an odd object from a library)
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[:max(limit - 3, 1)] + "..."
    return text


def clip(text: str, limit: int = 200) -> str:
    """`text` (e.g. a library's error message) on one line, cut to at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:max(limit - 3, 1)] + "..."


def _bounded(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    cut = len(text) - MAX_MESSAGE_CHARS
    return f"{text[:MAX_MESSAGE_CHARS - 120]} ... [{cut + 120} characters cut] ... {text[-60:]}"


class GlipError(Exception):
    """A user-facing error (bad input, bad file, bad checkpoint). The CLI prints its message
    on one line and exits with a non-zero status; it never shows a traceback for these.

    The message is cut to `MAX_MESSAGE_CHARS` (whatever a caller put into it, the error stays one
    readable line). A GlipError raised in a worker process comes back re-created by PyTorch's
    DataLoader with the worker's whole traceback as its message; such a message is cut back to the
    original one."""

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message)
        if "\nOriginal Traceback" in text and _QUALIFIED_NAME in text:
            text = text.rsplit(_QUALIFIED_NAME, 1)[1].strip()
        super().__init__(_bounded(text), *args)
