"""Captions of synthetic scenes with grounded phrase spans.

A phrase describes objects by shape and some of size, pattern and colour ("a small red circle",
"the striped square"); it is grounded to EVERY object of the scene matching its description,
and says how many there are when more than one ("two red circles"). Phrases used in a spatial
relation ("a small red circle above a blue square") describe exactly one object each; the
relation is computed from the two objects' (visible) boxes and only stated when clear.

Spans are character offsets into the caption: `caption[start:end] == phrase.text`, and a
phrase's text includes its article or count word.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from glipcli.nano.synthetic.vocabulary import (COUNT_WORDS, PATTERN_SYNONYMS, SIZE_SYNONYMS, Wording,
                                               colour_word, shape_noun)

if TYPE_CHECKING:
    from glipcli.nano.synthetic.world import Scene, SceneObject

RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
_TRIES = 12


@dataclass(frozen=True)
class CaptionPhrase:
    """A grounded phrase: `caption[start:end] == text`; objects: indices into `Scene.objects`."""

    text: str
    start: int
    end: int
    objects: tuple[int, ...]


@dataclass(frozen=True)
class Caption:
    """A caption and its phrases (in caption order). relation: the spatial relation stated
    between phrases 0 and 1 (phrase 0 is `relation` phrase 1), or None."""

    text: str
    phrases: tuple[CaptionPhrase, ...]
    wording: str = "plain"
    relation: str | None = None


@dataclass(frozen=True)
class Description:
    """The attributes a phrase mentions (None = not mentioned); the shape is always mentioned."""

    shape: str
    colour: str | None = None
    size: str | None = None
    pattern: str | None = None

    def matches(self, obj: "SceneObject") -> bool:
        return (obj.shape == self.shape
                and (self.colour is None or obj.colour == self.colour)
                and (self.size is None or obj.size == self.size)
                and (self.pattern is None or obj.pattern == self.pattern))

    def referents(self, objects: Sequence["SceneObject"]) -> tuple[int, ...]:
        return tuple(i for i, obj in enumerate(objects) if self.matches(obj))


def spatial_relation(a: Sequence[float], b: Sequence[float]) -> str | None:
    """How box `a` stands to box `b` (COCO xywh): `"to the left of"`, `"to the right of"`,
    `"above"`, `"below"`, or None when neither direction clearly dominates (centres offset
    by at least half the mean extent along it, and 1.5 times the offset across it)."""
    dx = (b[0] + b[2] / 2.0) - (a[0] + a[2] / 2.0)
    dy = (b[1] + b[3] / 2.0) - (a[1] + a[3] / 2.0)
    if abs(dx) >= 1.5 * abs(dy) and abs(dx) >= (a[2] + b[2]) / 4.0:
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) >= 1.5 * abs(dx) and abs(dy) >= (a[3] + b[3]) / 4.0:
        return "above" if dy > 0 else "below"
    return None


def describe(objects: Sequence["SceneObject"], anchor: int, rng: np.random.Generator,
             unique: bool) -> Description | None:
    """A random description of `objects[anchor]`; with `unique`, one that matches no other
    object (attributes are added until it does), or None when no description can."""
    obj = objects[anchor]
    desc = Description(
        shape=obj.shape,
        colour=obj.colour if rng.random() < 0.85 else None,
        size=obj.size if rng.random() < 0.35 else None,
        pattern=obj.pattern if obj.pattern is not None and rng.random() < 0.4 else None,
    )
    if not unique:
        return desc
    for attribute in ("colour", "size", "pattern"):
        if len(desc.referents(objects)) == 1:
            return desc
        desc = replace(desc, **{attribute: getattr(obj, attribute)})
    return desc if len(desc.referents(objects)) == 1 else None


def phrase_text(desc: Description, count: int, rng: np.random.Generator, wording: Wording = "plain") -> str:
    """The noun phrase for `desc` grounded to `count` objects ("a small red circle",
    "two red circles"), with its article or count word. The synonym wording replaces every
    attribute word; the descriptive one describes the shape and keeps the other words plain."""
    choice = int(rng.integers(0, 2))
    words = []
    if desc.size is not None:
        words.append(SIZE_SYNONYMS[desc.size][choice] if wording == "synonym" else desc.size)
    if desc.pattern is not None:
        words.append(PATTERN_SYNONYMS[desc.pattern][choice] if wording == "synonym" else desc.pattern)
    if desc.colour is not None:
        words.append(colour_word(desc.colour, wording, choice))
    words.append(shape_noun(desc.shape, wording, choice, plural=count > 1))
    body = " ".join(words)
    if count > 1:
        return f"{COUNT_WORDS[count] if count < len(COUNT_WORDS) else 'many'} {body}"
    if rng.random() < 0.3:
        return f"the {body}"
    return f"{'an' if body[0] in 'aeiou' else 'a'} {body}"


class _Builder:
    """Concatenates caption text, recording the spans of grounded pieces."""

    def __init__(self) -> None:
        self.text = ""
        self.phrases: list[CaptionPhrase] = []

    def add(self, text: str) -> None:
        self.text += text

    def phrase(self, text: str, objects: tuple[int, ...]) -> None:
        start = len(self.text)
        self.text += text
        self.phrases.append(CaptionPhrase(text=text, start=start, end=len(self.text), objects=objects))


def _relation_caption(scene: "Scene", rng: np.random.Generator, wording: Wording) -> Caption | None:
    objects = scene.objects
    for _ in range(_TRIES):
        a, b = (int(i) for i in rng.choice(len(objects), size=2, replace=False))
        relation = spatial_relation(objects[a].box, objects[b].box)
        if relation is None:
            continue
        da, db = describe(objects, a, rng, unique=True), describe(objects, b, rng, unique=True)
        if da is None or db is None:
            continue
        out = _Builder()
        if rng.random() < 0.3:
            out.add("there is ")
        out.phrase(phrase_text(da, 1, rng, wording), (a,))
        out.add(f" {relation} ")
        out.phrase(phrase_text(db, 1, rng, wording), (b,))
        return Caption(out.text, tuple(out.phrases), wording, relation)
    return None


def _list_caption(scene: "Scene", rng: np.random.Generator, wording: Wording, parts: int) -> Caption:
    objects = scene.objects
    chosen: list[tuple[Description, tuple[int, ...]]] = []
    used: set[int] = set()
    for anchor in (int(i) for i in rng.permutation(len(objects))):
        if anchor in used or len(chosen) == parts:
            continue
        desc = describe(objects, anchor, rng, unique=False)
        referents = desc.referents(objects)
        if used.intersection(referents):
            continue
        chosen.append((desc, referents))
        used.update(referents)
    out = _Builder()
    lead = rng.random()
    plural_first = len(chosen[0][1]) > 1
    if lead < 0.2:
        out.add("an image of ")
    elif lead < 0.35:
        out.add("there are " if plural_first else "there is ")
    for k, (desc, referents) in enumerate(chosen):
        if k:
            out.add(" and " if k == len(chosen) - 1 else ", ")
        out.phrase(phrase_text(desc, len(referents), rng, wording), referents)
    return Caption(out.text, tuple(out.phrases), wording, None)


def scene_captions(scene: "Scene", rng: np.random.Generator, n: int, wording: Wording = "plain") -> list[Caption]:
    """Up to `n` distinct captions of `scene` (none for a scene without objects)."""
    if not scene.objects or n <= 0:
        return []
    captions: list[Caption] = []
    seen: set[str] = set()
    for _ in range(n * 4):
        if len(captions) == n:
            break
        pick = rng.random()
        caption = None
        if len(scene.objects) >= 2 and pick < 0.5:
            caption = _relation_caption(scene, rng, wording)
        if caption is None:
            parts = int(rng.integers(1, min(3, len(scene.objects)) + 1))
            caption = _list_caption(scene, rng, wording, parts)
        if caption.text not in seen:
            seen.add(caption.text)
            captions.append(caption)
    return captions
