"""What a split of the synthetic world may show (`SceneRules`) and how its objects are named as
detection categories (`CategoryScheme`), with the named tasks built from a `HeldOut`.

Tasks (`task_rules`, `task_categories`):

- `pretrain`: every shape but the held-out one, every colour-shape pair but the held-out ones;
  categories are colour-shape names (`"red circle"`), so detection prompts like
  `"red circle. blue square."` are the category names themselves.
- `unseen-combos`: every image holds 1-2 held-out colour-shape objects among seen distractors
  (same colours on other shapes, same shapes in other colours); categories are the held-out
  combinations only, so a detection of a distractor is a false positive.
- `novel-shape`: every image holds 1-2 objects of the held-out shape (any colour) among
  distractors; the single category is that shape (`"arrow"`).
- `all`: everything the world edition draws, colour-shape categories.

The evaluation tasks draw the first edition's shapes (`CLASSIC_SHAPES`) only, whatever the world
edition, so every model is measured on the same data.

An object whose name is not a category is still drawn (a distractor) and left unannotated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from glipcli.nano.synthetic.vocabulary import (CLASSIC_SHAPES, COLOURS, SHAPES, HeldOut, check_colour, check_shape,
                                               combo_name)
from glipcli.errors import GlipError

TASKS: tuple[str, ...] = ("pretrain", "unseen-combos", "novel-shape", "all")
CategoryKind = Literal["colour-shape", "shape", "colour"]
CATEGORY_KINDS: tuple[str, ...] = ("colour-shape", "shape", "colour")


@dataclass(frozen=True)
class SceneRules:
    """What images of a split may show.

    shapes, colours: allowed attributes; exclude_combos: (colour, shape) pairs never drawn.
    focus_combos: when non-empty, every image holds between 1 and `focus_max` objects drawn from
    these pairs (the rest of its objects are drawn from the allowed, non-focus pairs).
    """

    name: str
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    exclude_combos: frozenset[tuple[str, str]] = frozenset()
    focus_combos: frozenset[tuple[str, str]] = frozenset()
    focus_max: int = 2

    def __post_init__(self) -> None:
        for shape in self.shapes:
            check_shape(shape)
        for colour in self.colours:
            check_colour(colour)
        object.__setattr__(self, "exclude_combos", frozenset(self.exclude_combos))
        object.__setattr__(self, "focus_combos", frozenset(self.focus_combos))
        if not self.combos():
            raise GlipError(f"scene rules {self.name!r} allow no colour-shape combination")
        bad = [combo_name(*c) for c in self.focus_combos if not self.allows(*c)]
        if bad:
            raise GlipError(f"scene rules {self.name!r}: focus combinations {', '.join(sorted(bad))} are not allowed")
        if self.focus_combos and not self.background_combos():
            raise GlipError(f"scene rules {self.name!r} leave no distractor combination besides the focus ones")

    def allows(self, colour: str, shape: str) -> bool:
        return colour in self.colours and shape in self.shapes and (colour, shape) not in self.exclude_combos

    def combos(self) -> list[tuple[str, str]]:
        """Allowed (colour, shape) pairs in shape then palette order."""
        return [(c, s) for s in SHAPES for c in COLOURS if self.allows(c, s)]

    def background_combos(self) -> list[tuple[str, str]]:
        """Allowed pairs that are not focus pairs (the distractors of a focused split)."""
        return [c for c in self.combos() if c not in self.focus_combos]


@dataclass(frozen=True)
class CategoryScheme:
    """How objects become detection categories.

    kind: `colour-shape` ("red circle"), `shape` ("circle") or `colour` ("red").
    names: the categories, in order; None = every name the split rules can produce (canonical
    order: shapes, then palette). Objects whose name is not listed are left unannotated.
    """

    kind: CategoryKind = "colour-shape"
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in CATEGORY_KINDS:
            raise GlipError(f"unknown category kind {self.kind!r}; choose one of: {', '.join(CATEGORY_KINDS)}")
        if self.names is not None:
            names = tuple(" ".join(n.lower().split()) for n in self.names)
            if not names:
                raise GlipError("the category list is empty")
            if len(set(names)) != len(names):
                raise GlipError(f"duplicate category in {', '.join(names)}")
            for name in names:
                self._check_name(name)
            object.__setattr__(self, "names", names)

    def _check_name(self, name: str) -> None:
        words = name.split()
        ok = {"colour-shape": len(words) == 2 and words[0] in COLOURS and words[1] in SHAPES,
              "shape": len(words) == 1 and words[0] in SHAPES,
              "colour": len(words) == 1 and words[0] in COLOURS}[self.kind]
        if not ok:
            raise GlipError(f"{name!r} is not a {self.kind} category (e.g. "
                            f"{ {'colour-shape': 'red circle', 'shape': 'circle', 'colour': 'red'}[self.kind]!r})")

    def name_of(self, colour: str, shape: str) -> str:
        """The category name of an object (whether or not it is among `names`)."""
        return {"colour-shape": combo_name(colour, shape), "shape": shape, "colour": colour}[self.kind]

    def categories(self, rules: list[SceneRules]) -> list[str]:
        """The category list of a dataset whose splits follow `rules`."""
        if self.names is not None:
            return list(self.names)
        possible = {self.name_of(c, s) for r in rules for c, s in r.combos()}
        order = [self.name_of(c, s) for s in SHAPES for c in COLOURS]
        if self.kind == "colour":
            order = list(COLOURS)
        seen: dict[str, None] = {}
        for name in order:
            if name in possible:
                seen.setdefault(name)
        return list(seen)


def task_rules(task: str, held_out: HeldOut, pretrain_shapes: tuple[str, ...] = SHAPES) -> SceneRules:
    """The scene rules of a named task (see the module docstring). `pretrain` and `all` draw from
    `pretrain_shapes` (the world edition's); the evaluation tasks from `CLASSIC_SHAPES` only, so
    their data is the same whatever world a model was pre-trained on."""
    for shape in pretrain_shapes:
        check_shape(shape)
    if task == "pretrain":
        shapes = tuple(s for s in pretrain_shapes if s != held_out.shape)
        return SceneRules("pretrain", shapes=shapes, exclude_combos=held_out.combos)
    # The classic shapes, plus any shape the held-out definitions name (a user may hold out a newer one).
    named = {s for _, s in held_out.combos} | ({held_out.shape} if held_out.shape else set())
    evaluation_shapes = tuple(s for s in SHAPES if s in CLASSIC_SHAPES or s in named)
    seen_shapes = tuple(s for s in evaluation_shapes if s != held_out.shape)
    if task == "unseen-combos":
        if not held_out.combos:
            raise GlipError("task 'unseen-combos' needs held-out colour-shape combinations")
        return SceneRules("unseen-combos", shapes=seen_shapes, focus_combos=held_out.combos)
    if task == "novel-shape":
        if held_out.shape is None:
            raise GlipError("task 'novel-shape' needs a held-out shape")
        focus = frozenset((c, held_out.shape) for c in COLOURS)
        return SceneRules("novel-shape", shapes=evaluation_shapes, exclude_combos=held_out.combos,
                          focus_combos=focus)
    if task == "all":
        return SceneRules("all", shapes=tuple(pretrain_shapes))
    raise GlipError(f"unknown synthetic task {task!r}; choose one of: {', '.join(TASKS)}")


def task_categories(task: str, held_out: HeldOut) -> CategoryScheme:
    """The default category scheme of a named task."""
    if task == "unseen-combos":
        return CategoryScheme("colour-shape", tuple(held_out.combo_names))
    if task == "novel-shape":
        if held_out.shape is None:
            raise GlipError("task 'novel-shape' needs a held-out shape")
        return CategoryScheme("shape", (held_out.shape,))
    task_rules(task, held_out)  # validates the name
    return CategoryScheme("colour-shape")

