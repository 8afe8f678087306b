"""Phrase grounding: which phrases of a caption to ground, and the boxes found for each.

Phrases are given three ways, freely combined:
- bracket markup in the caption: `"[a woman] holding [a cup of [coffee]]"` — the brackets are
  removed from the caption and each bracketed span becomes a phrase (nesting gives overlapping
  phrases);
- phrase texts, located in the (bracket-free) caption: `"a cup of coffee"`; a text found more
  than once must be given by span instead;
- explicit character spans `(start, end)` (end exclusive) into the bracket-free caption.
With none of them, the whole caption is one phrase (a referring expression).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from glipcli.errors import GlipError, excerpt
from glipcli.prompts.caption import Phrase

PhraseSpec = str | Phrase | tuple[int, int]


@dataclass
class GroundedBox:
    box_xyxy: list[float]  # original-image pixels
    score: float


@dataclass
class GroundedPhrase:
    text: str
    span: list[int]  # [start, end) character span in the caption
    boxes: list[GroundedBox] = field(default_factory=list)  # best first, at most top_k


@dataclass
class GroundingResult:
    image: str
    width: int
    height: int
    caption: str
    phrases: list[GroundedPhrase] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_markup(caption: str) -> tuple[str, list[Phrase]]:
    """Remove `[` `]` from `caption`; each bracketed part (nesting allowed) becomes a phrase.

    `"[a woman] holding [a cup of [coffee]]"` -> `"a woman holding a cup of coffee"` with phrases
    "a woman" [0, 7), "a cup of coffee" [16, 31), "coffee" [25, 31), ordered by start."""
    text: list[str] = []
    opened: list[int] = []
    spans: list[tuple[int, int]] = []
    for position, char in enumerate(caption):
        if char == "[":
            opened.append(len(text))
        elif char == "]":
            if not opened:
                raise GlipError(f"caption markup: ']' at character {position} closes no '['")
            start = opened.pop()
            spans.append((start, len(text)))
        else:
            text.append(char)
    if opened:
        raise GlipError(f"caption markup: {len(opened)} '[' not closed")
    clean = "".join(text)
    phrases = []
    for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
        inner = clean[start:end]
        stripped = inner.strip()
        if not stripped:
            raise GlipError("caption markup: an empty phrase '[]'")
        start += len(inner) - len(inner.lstrip())
        phrases.append(Phrase(stripped, start, start + len(stripped)))
    return clean, phrases


def _occurrences(caption: str, text: str, flags: int) -> list[int]:
    return [m.start() for m in re.finditer(re.escape(text), caption, flags)]


def locate_phrase(caption: str, text: str) -> Phrase:
    """The span of `text` in `caption`: an exact match, else a case-insensitive one; whole-word
    matches are preferred over matches inside longer words. Raises GlipError when absent or
    ambiguous (the message lists the candidate spans to pass instead)."""
    needle = text.strip()
    if not needle:
        raise GlipError("a phrase is empty")
    for flags in (0, re.IGNORECASE):
        starts = _occurrences(caption, needle, flags)
        if not starts:
            continue
        whole = [s for s in starts if _whole_word(caption, s, s + len(needle))]
        candidates = whole or starts
        if len(candidates) > 1:
            spans = " or ".join(f"{s}:{s + len(needle)}" for s in candidates)
            raise GlipError(f"phrase {excerpt(needle)} occurs {len(candidates)} times in the caption; "
                            f"choose one with --phrase-span {spans}")
        start = candidates[0]
        return Phrase(caption[start:start + len(needle)], start, start + len(needle))
    raise GlipError(f"phrase {excerpt(needle)} is not in the caption {excerpt(caption)}")


def _whole_word(caption: str, start: int, end: int) -> bool:
    before = caption[start - 1] if start > 0 else " "
    after = caption[end] if end < len(caption) else " "
    return not before.isalnum() and not after.isalnum()


def parse_span(text: str) -> tuple[int, int]:
    """`"16:31"` -> (16, 31)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise GlipError(f"phrase span {excerpt(text)} is not START:END (character offsets, end exclusive)")
    return int(match.group(1)), int(match.group(2))


def span_phrase(caption: str, start: int, end: int) -> Phrase:
    """The phrase at characters [start, end) of `caption`, checked to be a non-empty range."""
    if not 0 <= start < end <= len(caption):
        raise GlipError(f"phrase span {start}:{end} is not a non-empty range inside the "
                        f"{len(caption)}-character caption")
    if not caption[start:end].strip():
        raise GlipError(f"phrase span {start}:{end} holds only spaces")
    return Phrase(caption[start:end], start, end)


def grounding_phrases(caption: str, phrases: Sequence[PhraseSpec] = (), markup: bool = True
                      ) -> tuple[str, list[Phrase]]:
    """The caption to encode and the phrases to ground (markup phrases first, then `phrases` in
    order; a phrase given twice with the same span is kept once)."""
    if not isinstance(caption, str) or not caption.strip():
        raise GlipError("the caption is empty")
    found: list[Phrase] = []
    if markup:
        caption, found = parse_markup(caption)
    for spec in phrases:
        if isinstance(spec, Phrase):
            phrase = span_phrase(caption, spec.start, spec.end)
            if spec.text and spec.text != phrase.text:
                raise GlipError(f"phrase {excerpt(spec.text)}: span {spec.start}:{spec.end} "
                                f"holds {excerpt(phrase.text)}")
        elif isinstance(spec, tuple):
            phrase = span_phrase(caption, int(spec[0]), int(spec[1]))
        else:
            phrase = locate_phrase(caption, str(spec))
        found.append(phrase)
    if not found:
        stripped = caption.strip()
        start = caption.index(stripped)
        found = [Phrase(stripped, start, start + len(stripped))]
    unique: list[Phrase] = []
    for phrase in found:
        if all((p.start, p.end) != (phrase.start, phrase.end) for p in unique):
            unique.append(phrase)
    return caption, unique


def top_boxes_per_phrase(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                         num_phrases: int, top_k: int, box_threshold: float = 0.0
                         ) -> list[list[GroundedBox]]:
    """Per phrase, its `top_k` best boxes scoring at least `box_threshold`.

    boxes: [K, 4] xyxy (original pixels); scores: [K]; labels: [K] int, 1-based phrase index."""
    if top_k < 1:
        raise GlipError(f"top-k must be at least 1 (got {top_k})")
    out: list[list[GroundedBox]] = []
    for phrase in range(num_phrases):
        keep = torch.nonzero((labels == phrase + 1) & (scores >= box_threshold)).flatten()
        order = keep[torch.argsort(scores[keep], descending=True, stable=True)][:top_k]
        out.append([GroundedBox([float(v) for v in boxes[i]], float(scores[i])) for i in order.tolist()])
    return out
