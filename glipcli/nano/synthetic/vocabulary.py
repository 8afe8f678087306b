"""The words and attributes of the synthetic grounding world, and its held-out definitions.

Every object has a shape, a colour, a size class and an optional pattern. Their *plain* names
(`red`, `circle`, `small`, `striped`) are the only words pre-training ever sees. Two other
wordings exist for the language side of the evaluation and never occur in pre-training:

- `synonym`: another word for the same attribute (`crimson disc` for `red circle`);
- `descriptive`: a description instead of the shape's name (`red shape with five points`).

`HeldOut` names what the pre-training split never shows: a few colour-shape combinations
(each colour and each shape still appears with other partners) and one whole shape (for
few-shot transfer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from glipcli.errors import GlipError

Wording = Literal["plain", "synonym", "descriptive"]
WORDINGS: tuple[str, ...] = ("plain", "synonym", "descriptive")

# The first edition's shapes: the evaluation tasks (`unseen-combos`, `novel-shape`) draw only these,
# so `glip bench synthetic` measures every edition of nano on the same data.
CLASSIC_SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "heart", "diamond", "hexagon", "arrow",
)
# The second edition adds families that teach localisation broadly: elongated (bar, ellipse,
# dumbbell, bolt), concave (crescent, bolt), composite (dumbbell) and more outlines; the
# elongated ones vary their aspect ratio and turn freely. Pre-training draws them, evaluation does not.
EXTRA_SHAPES: tuple[str, ...] = (
    "bar", "ellipse", "crescent", "bolt", "dumbbell", "pentagon", "semicircle", "trapezoid",
)
SHAPES: tuple[str, ...] = CLASSIC_SHAPES + EXTRA_SHAPES

# Palette colours (RGB). Chosen to stay apart from each other in RGB space.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 32, 32),
    "green": (34, 158, 56),
    "blue": (36, 72, 222),
    "yellow": (242, 212, 30),
    "purple": (128, 44, 172),
    "orange": (246, 128, 18),
    "white": (246, 246, 246),
    "black": (18, 18, 18),
    "pink": (250, 142, 196),
    "brown": (118, 70, 30),
    "grey": (132, 132, 132),
    "cyan": (30, 204, 214),
}

SIZES: tuple[str, ...] = ("small", "large")
PATTERNS: tuple[str, ...] = ("striped", "dotted")  # an object may also have no pattern (None)

COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "leafy"),
    "blue": ("azure", "cobalt"),
    "yellow": ("golden", "lemon"),
    "purple": ("violet", "plum"),
    "orange": ("tangerine", "amber"),
    "white": ("ivory", "snowy"),
    "black": ("ebony", "jet"),
    "pink": ("rose", "salmon"),
    "brown": ("chocolate", "chestnut"),
    "grey": ("silver", "ashen"),
    "cyan": ("turquoise", "aqua"),
}

SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "disk"),
    "square": ("box", "tile"),
    "triangle": ("wedge", "pyramid"),
    "star": ("pentagram", "sparkle"),
    "cross": ("plus sign", "plus"),
    "ring": ("hoop", "donut"),
    "heart": ("valentine", "love symbol"),
    "diamond": ("rhombus", "lozenge"),
    "hexagon": ("honeycomb cell", "honeycomb"),
    "arrow": ("pointer", "chevron"),
    "bar": ("rod", "plank"),
    "ellipse": ("oval", "egg"),
    "crescent": ("moon", "sickle"),
    "bolt": ("lightning", "zigzag"),
    "dumbbell": ("barbell", "weights"),
    "pentagon": ("pentagonal plaque", "pentagonal badge"),
    "semicircle": ("half round", "dome"),
    "trapezoid": ("trapezium", "keystone"),
}

# Descriptions that do not use the shape's plain name (a shape word of another shape may occur).
SHAPE_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "circle": ("round shape", "perfectly round blob"),
    "square": ("shape with four equal sides", "four-cornered block"),
    "triangle": ("shape with three corners", "three-sided shape"),
    "star": ("shape with five points", "five-pointed shape"),
    "cross": ("shape with four arms", "plus-shaped mark"),
    "ring": ("round shape with a hole", "hollow round band"),
    "heart": ("symbol of love", "shape with two rounded lobes and a point"),
    "diamond": ("square standing on a corner", "tilted four-sided shape"),
    "hexagon": ("shape with six sides", "six-cornered shape"),
    "arrow": ("shape pointing in one direction", "pointer with a triangular tip"),
    "bar": ("long thin strip", "narrow stick"),
    "ellipse": ("stretched round shape", "flattened round blob"),
    "crescent": ("curved sliver", "shape like a sliver of moon"),
    "bolt": ("jagged streak", "shape like a flash of lightning"),
    "dumbbell": ("two balls joined by a handle", "handle with round ends"),
    "pentagon": ("shape with five sides", "five-cornered shape"),
    "semicircle": ("half of a round shape", "round shape cut in two"),
    "trapezoid": ("shape with one short and one long side", "four-sided shape with a narrow top"),
}

SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {"small": ("tiny", "little"), "large": ("big", "huge")}
PATTERN_SYNONYMS: dict[str, tuple[str, ...]] = {"striped": ("banded", "stripy"), "dotted": ("spotted", "polka-dot")}

PLURALS: dict[str, str] = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

# Default held-out definitions: each colour and each shape is used at most once, so every held-out
# colour and shape is still seen in pre-training with other partners.
DEFAULT_HELD_OUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("purple", "star"),
    ("orange", "circle"),
    ("green", "triangle"),
    ("blue", "ring"),
    ("yellow", "cross"),
    ("red", "hexagon"),
)
DEFAULT_HELD_OUT_SHAPE = "arrow"


def check_colour(colour: str) -> str:
    if colour not in COLOURS:
        raise GlipError(f"unknown colour {colour!r}; choose one of: {', '.join(COLOURS)}")
    return colour


def check_shape(shape: str) -> str:
    if shape not in SHAPES:
        raise GlipError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")
    return shape


def parse_combo(text: str) -> tuple[str, str]:
    """`"purple star"` -> ("purple", "star"); GlipError for anything else."""
    words = text.strip().lower().split()
    if len(words) != 2:
        raise GlipError(f"colour-shape combination {text!r} must be two words, e.g. 'purple star'")
    return check_colour(words[0]), check_shape(words[1])


def combo_name(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def synonym_words() -> frozenset[str]:
    """Every word that only the synonym and descriptive wordings use (never in pre-training)."""
    words: set[str] = set()
    plain = set(COLOURS) | set(SHAPES) | set(SIZES) | set(PATTERNS) | set(PLURALS.values())
    for table in (COLOUR_SYNONYMS, SHAPE_SYNONYMS, SIZE_SYNONYMS, PATTERN_SYNONYMS, SHAPE_DESCRIPTIONS):
        for alternatives in table.values():
            for alternative in alternatives:
                words.update(w for w in alternative.replace("-", " ").split() if w not in plain)
    # Function words shared with plain captions are not distinctive.
    return frozenset(words - {"with", "a", "one", "in", "and", "on", "of", "shape", "four", "three",
                              "five", "six", "two"})


def colour_word(colour: str, wording: Wording, choice: int = 0) -> str:
    """The colour in a wording (`descriptive` keeps the plain colour name)."""
    if wording == "synonym":
        options = COLOUR_SYNONYMS[colour]
        return options[choice % len(options)]
    return colour


def shape_noun(shape: str, wording: Wording, choice: int = 0, plural: bool = False) -> str:
    """The shape's noun phrase in a wording (plural for the plain wording only: `circles`)."""
    if wording == "synonym":
        options = SHAPE_SYNONYMS[shape]
        word = options[choice % len(options)]
        return _pluralise(word) if plural else word
    if wording == "descriptive":
        options = SHAPE_DESCRIPTIONS[shape]
        word = options[choice % len(options)]
        return _pluralise(word) if plural else word
    return PLURALS[shape] if plural else shape


def _pluralise(phrase: str) -> str:
    """Pluralise the head noun of a short noun phrase: the first word before `with`/`of`/... ."""
    words = phrase.split()
    for i, word in enumerate(words):
        if word in ("with", "of", "standing", "pointing") and i > 0:
            words[i - 1] = _plural_word(words[i - 1])
            return " ".join(words)
    words[-1] = _plural_word(words[-1])
    return " ".join(words)


def _plural_word(word: str) -> str:
    if word.endswith(("s", "x", "sh", "ch")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def category_text(name: str, wording: Wording, choice: int = 0) -> str:
    """A detection category name (`"red circle"`, `"circle"` or `"red"`) in another wording."""
    words = name.split()
    if len(words) == 2 and words[0] in COLOURS and words[1] in SHAPES:
        return f"{colour_word(words[0], wording, choice)} {shape_noun(words[1], wording, choice)}"
    if len(words) == 1 and words[0] in SHAPES:
        return shape_noun(words[0], wording, choice)
    if len(words) == 1 and words[0] in COLOURS:
        word = colour_word(words[0], wording, choice)
        return word if wording == "plain" else f"{word} shape"
    raise GlipError(f"{name!r} is not a synthetic-world category (colour, shape or 'colour shape')")


@dataclass(frozen=True)
class HeldOut:
    """What pre-training never shows.

    combos: colour-shape pairs never drawn in pre-training images (zero-shot composition).
    shape: a shape never drawn at all in pre-training images (few-shot transfer); None = none.
    Synonym and descriptive wordings are held out by construction: pre-training text is plain.
    """

    combos: frozenset[tuple[str, str]] = field(default_factory=lambda: frozenset(DEFAULT_HELD_OUT_COMBOS))
    shape: str | None = DEFAULT_HELD_OUT_SHAPE

    def __post_init__(self) -> None:
        object.__setattr__(self, "combos", frozenset(self.combos))
        for colour, shape in self.combos:
            check_colour(colour)
            check_shape(shape)
            if shape == self.shape:
                raise GlipError(f"held-out combination '{colour} {shape}' uses the held-out shape {shape!r}; "
                                "that shape is never drawn in pre-training anyway")
        if self.shape is not None:
            check_shape(self.shape)
        seen_shapes = set(SHAPES) - {self.shape}
        for shape in {s for _, s in self.combos}:
            if all((c, shape) in self.combos for c in COLOURS):
                raise GlipError(f"every colour of {shape!r} is held out: the shape would never be seen")
        for colour in {c for c, _ in self.combos}:
            if all((colour, s) in self.combos for s in seen_shapes):
                raise GlipError(f"every shape in {colour!r} is held out: the colour would never be seen")

    @property
    def combo_names(self) -> list[str]:
        """The held-out combinations as category names, in palette then shape order."""
        return [combo_name(c, s) for c, s in sorted(self.combos, key=_combo_order)]

    def to_dict(self) -> dict:
        return {"combos": self.combo_names, "shape": self.shape}


def _combo_order(combo: tuple[str, str]) -> tuple[int, int]:
    return SHAPES.index(combo[1]), list(COLOURS).index(combo[0])
