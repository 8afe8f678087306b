"""Detections of a prompt's classes scored against a dataset's ground truth: the classes mapped to
categories, the images found, each detection a pycocotools result.

    spec = dataset_prompt_spec(ground_truth, prompt_file)    # the prompt file, else category names
    mapping = map_classes(spec, ground_truth)               # class i -> mapping.category_ids[i]
    results = [to_result(image_id, mapping.category_ids[d.phrase_index], d.box_xyxy, d.score) ...]

- Images are the ground truth's `images` in file order, found as `img_dir/file_name` (else by base
  name); a missing file is an error naming how many and the first, before the model runs.
- Every class of the prompt is mapped to one category of the ground truth by name, compared ignoring
  case and everything but letters and digits (`white king` = `white-king`), trying the class's label
  and then its grounded text. Roboflow's placeholder category (unused, named after the dataset, or
  id 0 with supercategory "none") and blank-named unused categories are never targets. When names do
  not match but the prompt has exactly as many classes as the ground truth has real categories, the
  i-th class is the i-th category in id order (the official OVERRIDE_CATEGORY convention) and a note
  says so; otherwise the unmatched classes are a GlipError listing the categories.
- Boxes become pycocotools results `[x, y, w, h]` with `w = x2 - x1 + 1` (COCO / ODinW, the official
  maskrcnn_benchmark conversion) or `w = x2 - x1` (`plus_one=False`, the official LVIS evaluation).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from glipcli.data.coco import placeholder_category_ids
from glipcli.errors import GlipError
from glipcli.prompts.prompt_file import ClassPrompt, PromptSpec, name_key


# -- images -----------------------------------------------------------------------------------------
def image_paths(images: Sequence[Mapping], img_dir: Path, where: str,
                name_of: Callable[[Mapping], str] | None = None) -> list[Path]:
    """The file of every image entry: `img_dir/file_name`, else `img_dir/<base name>`.
    name_of: how to get the relative path of an entry (default: its `file_name`)."""
    img_dir = Path(img_dir)
    paths: list[Path] = []
    missing: list[str] = []
    for entry in images:
        try:
            rel = name_of(entry) if name_of is not None else entry["file_name"]
        except (KeyError, TypeError):
            raise GlipError(f"{where}: image {entry.get('id', '?')!r} has no file_name") from None
        rel = str(rel).replace("\\", "/")
        candidate = img_dir / rel
        if not candidate.is_file():
            fallback = img_dir / PurePosixPath(rel).name
            candidate = fallback if fallback.is_file() else candidate
        if not candidate.is_file():
            missing.append(rel)
        paths.append(candidate)
    if missing:
        raise GlipError(f"{where}: {len(missing)} of {len(paths)} image files are missing from {img_dir} "
                        f"(first: {missing[0]})")
    return paths


def require_evaluable(ground_truth: Mapping, where: str) -> None:
    """A ground truth detections can be scored against: at least one image and one box that is
    not a crowd region (else every AP would be undefined, -1)."""
    if not ground_truth["images"]:
        raise GlipError(f"{where}: no images to evaluate (the split is empty)")
    if not any(not a.get("iscrowd") for a in ground_truth["annotations"]):
        raise GlipError(f"{where}: no annotations (boxes) at all: nothing to score detections against")


# -- classes -> categories ------------------------------------------------------------------------------
def real_categories(ground_truth: Mapping) -> list[dict]:
    """The ground truth's categories that can be targets, in id order: not Roboflow's placeholder and
    not a blank-named unused category."""
    cats = [c for c in ground_truth["categories"] if isinstance(c, Mapping)]
    used = {a.get("category_id") for a in ground_truth.get("annotations", [])}
    skip = placeholder_category_ids(cats, used)
    skip |= {c["id"] for c in cats if not str(c.get("name", "")).strip() and c["id"] not in used}
    return sorted((c for c in cats if c["id"] not in skip), key=lambda c: c["id"])


@dataclass
class CategoryMap:
    """category_ids[i]: the category id of prompt class i; notes: how the map was made, if unusual;
    uncovered: names of real categories with boxes that no class detects (their AP counts as 0)."""

    category_ids: list[int]
    notes: list[str] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)


def map_classes(spec: PromptSpec, ground_truth: Mapping, where: str = "ground truth") -> CategoryMap:
    """Map every class of `spec` to a category of `ground_truth` (see the module docstring)."""
    cats = real_categories(ground_truth)
    by_key: dict[str, list[dict]] = defaultdict(list)
    for c in cats:
        by_key[name_key(str(c.get("name", "")))].append(c)
    found: list[int | None] = []
    for cls in spec.classes:
        match = None
        for key in dict.fromkeys((name_key(cls.name), name_key(cls.grounded_text))):
            hits = by_key.get(key, [])
            if len(hits) == 1:
                match = hits[0]["id"]
                break
        found.append(match)
    notes: list[str] = []
    unmatched = [i for i, m in enumerate(found) if m is None]
    if unmatched:
        by_order = [c["id"] for c in cats]
        consistent = len(cats) == len(spec.classes) and all(m is None or m == by_order[i] for i, m in enumerate(found))
        if not consistent:
            names = ", ".join(repr(spec.classes[i].name) for i in unmatched)
            shown = ", ".join(f"{c['id']}: {c.get('name')!r}" for c in cats[:20]) + (", ..." if len(cats) > 20 else "")
            raise GlipError(f"{where}: prompt class{'es' if len(unmatched) > 1 else ''} {names} match no category "
                            f"by name (categories {shown})")
        notes.append("classes matched to categories by order (names differ: "
                     + ", ".join(f"{spec.classes[i].name!r} -> {cats[i].get('name')!r}" for i in unmatched) + ")")
        found = by_order
    ids = [int(m) for m in found]  # type: ignore[arg-type]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise GlipError(f"{where}: two prompt classes map to category {dup}")
    used = {a.get("category_id") for a in ground_truth.get("annotations", [])}
    uncovered = [str(c.get("name")) for c in cats if c["id"] in used and c["id"] not in set(ids)]
    if uncovered:
        notes.append("categories with boxes but no prompt class (AP 0): " + ", ".join(uncovered))
    return CategoryMap(ids, notes, uncovered)


def dataset_prompt_spec(ground_truth: Mapping, prompt_file: Path | None = None,
                        where: str = "the ground truth") -> PromptSpec:
    """The prompt file's spec, else the ground truth's real category names (id order), grounded as
    the official evaluation grounds them (`_` -> space, parentheses removed). Two categories of
    the same name cannot both be prompt classes: an error naming them (and `where`)."""
    if prompt_file is not None:
        return PromptSpec.from_yaml(prompt_file)
    cats = real_categories(ground_truth)
    if not cats:
        raise GlipError(f"{where}: no categories to detect")
    first: dict[str, Any] = {}
    for c in cats:
        name = str(c["name"])
        if name in first:
            raise GlipError(f"{where}: categories {first[name]} and {c['id']} are both named {name!r}; "
                            "class names must be unique (merge or rename them, or pass a prompt file)")
        first[name] = c["id"]
    return PromptSpec.from_names(list(first), clean_names=True)


def relabel_spec(spec: PromptSpec, names: Sequence[str]) -> PromptSpec:
    """`spec` with class i labelled `names[i]`, grounding the same text (a training set whose category
    names differ from the prompt file's labels, e.g. `white-king` for `white king`)."""
    classes = []
    for cls, name in zip(spec.classes, names, strict=True):
        text = None if cls.grounded_text == name else cls.grounded_text
        classes.append(ClassPrompt(name=name, text=text, prefix=cls.prefix, suffix=cls.suffix,
                                   threshold=cls.threshold))
    return PromptSpec(classes=classes, suppress=list(spec.suppress))


# -- detection -> results ---------------------------------------------------------------------------------
def to_result(image_id: Any, category_id: int, box_xyxy: Sequence[float], score: float, plus_one: bool = True) -> dict:
    """One pycocotools result from an xyxy box (see the module docstring for `plus_one`)."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    extra = 1.0 if plus_one else 0.0
    return {"image_id": image_id, "category_id": int(category_id), "bbox": [x0, y0, x1 - x0 + extra, y1 - y0 + extra],
            "score": float(score)}
