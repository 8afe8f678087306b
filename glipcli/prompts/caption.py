"""Build text prompts (captions) from class names, with the character span of each name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from glipcli.errors import GlipError

EVAL_SEPARATOR = ". "  # official cfg.DATASETS.SEPARATION_TOKENS
DEMO_SEPARATOR = " . "  # official GLIPDemo: appended after every name, the last one included


@dataclass(frozen=True)
class Phrase:
    """A phrase of a caption: its text and its character span [start, end) in the caption."""

    text: str
    start: int
    end: int


def _check_names(class_names: Sequence[str]) -> None:
    if isinstance(class_names, str):
        raise GlipError("class names must be a list of names, not a single string")
    if len(class_names) == 0:
        raise GlipError("no class names given: the prompt needs at least one name")
    for i, name in enumerate(class_names):
        if not isinstance(name, str):
            raise GlipError(f"class name #{i + 1} is not a string: {name!r}")
        if not name.strip():
            raise GlipError(f"class name #{i + 1} is empty or only whitespace")


def _join(class_names: Sequence[str], separator: str, trailing: bool) -> tuple[str, list[Phrase]]:
    caption = ""
    phrases: list[Phrase] = []
    for i, name in enumerate(class_names):
        start = len(caption)
        caption += name
        phrases.append(Phrase(text=name, start=start, end=len(caption)))
        if trailing or i < len(class_names) - 1:
            caption += separator
    return caption, phrases


def detection_caption(
    class_names: Sequence[str], separator: str = EVAL_SEPARATOR
) -> tuple[str, list[Phrase]]:
    """Official evaluation prompt: names joined by `separator`, none after the last.

    `["person", "bicycle"]` -> `"person. bicycle"` with spans [0,6) and [8,15).
    Names are used verbatim (not stripped), as the official code does.
    """
    _check_names(class_names)
    return _join(class_names, separator, trailing=False)


def demo_caption(class_names: Sequence[str]) -> tuple[str, list[Phrase]]:
    """Official demo prompt: every name followed by `" . "`.

    `["person", "bicycle"]` -> `"person . bicycle . "` with spans [0,6) and [9,16).
    """
    _check_names(class_names)
    return _join(class_names, DEMO_SEPARATOR, trailing=True)


def prompted_caption(
    parts: Sequence[tuple[str, str, str]],
    extra_phrases: Sequence[str] = (),
    separator: str = EVAL_SEPARATOR,
) -> tuple[str, list[Phrase], list[Phrase]]:
    """Official caption-prompt form of the evaluation caption, plus trailing extra phrases.

    parts: per class `(prefix, text, suffix)`; the class contributes `prefix + text + suffix`
    and only `text` is its phrase. Classes are joined by `separator`, none after the last.
    extra_phrases (the official `SUPRESS_QUERY` form) follow the classes, each preceded by
    `separator`. Returns (caption, class phrases, extra phrases).

    `[("", "fish", ""), ("there is a ", "package", " on the porch")]` ->
    `"fish. there is a package on the porch"` with class spans [0,4) and [17,24).
    With empty prefixes/suffixes and no extras this is exactly `detection_caption`.
    """
    caption = ""
    phrases: list[Phrase] = []
    for i, (prefix, text, suffix) in enumerate(parts):
        caption += prefix
        start = len(caption)
        caption += text
        phrases.append(Phrase(text=text, start=start, end=len(caption)))
        caption += suffix
        if i < len(parts) - 1:
            caption += separator
    extras: list[Phrase] = []
    for text in extra_phrases:
        caption += separator
        start = len(caption)
        caption += text
        extras.append(Phrase(text=text, start=start, end=len(caption)))
    return caption, phrases, extras
