"""Reading COCO detection annotations (Roboflow exports included) into clean, checked records.

Conventions (those of the official GLIP / maskrcnn_benchmark training code):

- A COCO box `[x, y, w, h]` becomes the inclusive-pixel box `x1 = x, y1 = y, x2 = x + w - 1,
  y2 = y + h - 1` (`w - 1` floored at 0), is clipped to `[0, W - 1] x [0, H - 1]`, and is dropped
  when it keeps no area (`x2 <= x1` or `y2 <= y1`): zero-width, zero-area and 1-pixel boxes,
  and boxes lying wholly outside the image. Dropped boxes are counted (`DataStats.degenerate`);
  kept boxes that reached beyond the image `[0, W] x [0, H]` are counted as clipped.
- `iscrowd = 1` annotations are not training targets; evaluation keeps them as crowd regions.
- Image sizes are the displayed ones: `load_image` applies the EXIF orientation, and the
  annotations are taken to be in that displayed frame, as Roboflow (and every tool that shows
  the image upright while labelling) writes them. An image whose JSON `width`/`height` differ
  from its displayed size is counted (`DataStats.size_mismatch`, with a warning); its boxes are
  still read in the displayed frame and clipped to the displayed size.
- Class labels are 0-based indices into `CocoDetectionData.classes`, in the order of the
  categories in the JSON. Roboflow's placeholder category (id 0, named after the dataset, the
  supercategory of the real classes, used by no annotation) is not a class.

Every problem with the file itself (unreadable or malformed JSON, missing keys, ids that are not
numbers or strings, unknown image or category ids, two classes with the same name, missing image
files, no images, not a single usable box in the split) is a one-line `GlipError` naming the file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glipcli.data.transforms import TRANSPOSING_ORIENTATIONS, exif_orientation, unreadable_image_message
from glipcli.errors import GlipError, excerpt
from glipcli.io import parse_json

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split.

    boxes: float32 [N, 4] inclusive-pixel xyxy in the displayed image, clipped, non-degenerate,
    non-crowd; labels: int64 [N] class indices. crowd_boxes: float32 [M, 4] and crowd_labels:
    int64 [M] (`iscrowd` regions, evaluation only).
    areas: float32 [N] COCO areas of `boxes` (the JSON's `area` when usable, else w*h).
    """

    index: int
    image_id: Any
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    crowd_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class DataStats:
    """What cleaning a split did (logged, and written to the training log)."""

    images: int = 0
    annotations: int = 0
    boxes: int = 0
    degenerate: int = 0
    clipped: int = 0
    crowd: int = 0
    images_without_boxes: int = 0
    size_mismatch: int = 0
    placeholder_categories: list[str] = field(default_factory=list)

    def summary(self, split: str) -> str:
        parts = [f"{split}: {self.images} images, {self.boxes} boxes"]
        if self.degenerate:
            parts.append(f"dropped {self.degenerate} zero-area/degenerate box{'es' if self.degenerate != 1 else ''}")
        if self.clipped:
            parts.append(f"clipped {self.clipped} box{'es' if self.clipped != 1 else ''} to the image")
        if self.crowd:
            parts.append(f"{self.crowd} crowd region{'s' if self.crowd != 1 else ''} (evaluation only)")
        if self.images_without_boxes:
            n = self.images_without_boxes
            parts.append(f"{n} image{'s' if n != 1 else ''} without boxes")
        if self.size_mismatch:
            n = self.size_mismatch
            parts.append(f"{n} image size{'s' if n != 1 else ''} differ from the JSON")
        if self.placeholder_categories:
            parts.append("ignored placeholder categor" + ("y " if len(self.placeholder_categories) == 1 else "ies ")
                         + ", ".join(repr(n) for n in self.placeholder_categories))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class CocoDetectionData:
    """A COCO detection split, cleaned.

    classes[i]: name of class i; category_ids[i]: its category id in the JSON.
    """

    split: str
    ann_path: Path
    image_dir: Path
    classes: list[str]
    category_ids: list[int]
    images: list[ImageRecord]
    stats: DataStats

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def annotated_indices(self) -> list[int]:
        """Images with at least one training box (the official training set drops the others)."""
        return [r.index for r in self.images if r.num_boxes > 0]


# -- reading -----------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GlipError(f"{path}: no such annotation file") from None
    except UnicodeDecodeError:
        raise GlipError(f"{path}: not UTF-8 text (expected COCO JSON)") from None
    except OSError as exc:
        raise GlipError(f"{path}: cannot read the annotation file ({exc.strerror})") from None
    data = parse_json(text, path, max_depth=None)  # its size is the file's; only the parser's depth limit applies
    if not isinstance(data, dict):
        raise GlipError(f"{path}: not a COCO annotation file (the top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise GlipError(f"{path}: not a COCO detection file (no {excerpt(key)} list)")
        if not isinstance(data[key], list):
            raise GlipError(f"{path}: {excerpt(key)} must be a list, got {type(data[key]).__name__}")
    return data


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _categories(data: dict, path: Path) -> list[dict]:
    cats = data["categories"]
    if not cats:
        raise GlipError(f"{path}: no categories")
    seen: set = set()
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict):
            raise GlipError(f"{path}: categories[{i}] is not an object")
        if "id" not in cat or not _is_id(cat["id"]) or isinstance(cat["id"], str):
            raise GlipError(f"{path}: categories[{i}] has no integer 'id'")
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise GlipError(f"{path}: category {cat['id']} has no name")
        if cat["id"] in seen:
            raise GlipError(f"{path}: duplicate category id {cat['id']}")
        seen.add(cat["id"])
    return cats


def placeholder_category_ids(categories: Sequence[dict], used: set) -> set:
    """Roboflow's placeholder: a category no annotation uses whose name is the supercategory of
    another category (Roboflow names it after the dataset), or whose supercategory is "none"."""
    found = set()
    for cat in categories:
        if cat["id"] in used:
            continue
        others = {c.get("supercategory") for c in categories
                  if c is not cat and isinstance(c.get("supercategory"), str)}
        if cat["name"] in others or (cat["id"] == 0 and cat.get("supercategory") == "none"):
            found.add(cat["id"])
    return found


def _displayed_size(path: Path) -> tuple[int, int]:
    """(width, height) as shown, i.e. after the EXIF orientation; reads the header only. The
    orientation is read exactly as `load_image` reads it (invalid or broken EXIF: none)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = exif_orientation(image)
    except Exception as exc:  # PIL raises many types for corrupt files
        raise GlipError(unreadable_image_message(path, exc)) from None
    if orientation in TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def _image_path(image_dir: Path, file_name: str) -> Path | None:
    candidate = image_dir / file_name
    if candidate.is_file():
        return candidate
    fallback = image_dir / Path(file_name).name
    return fallback if fallback.is_file() else None


def clean_box(bbox: Any, width: int, height: int) -> tuple[np.ndarray | None, bool]:
    """COCO `[x, y, w, h]` -> (inclusive xyxy clipped to the image, or None if degenerate;
    whether the box reached beyond `[0, W] x [0, H]`). Raises ValueError for a malformed box."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError("bbox must be a list [x, y, width, height]")
    values = [_number(v) for v in bbox]
    if any(v is None for v in values):
        raise ValueError(f"bbox must hold 4 finite numbers, got {excerpt(bbox)}")
    x, y, w, h = values
    outside = x < 0 or y < 0 or x + w > width or y + h > height
    x1, y1 = x, y
    x2, y2 = x + max(w - 1.0, 0.0), y + max(h - 1.0, 0.0)
    x1, x2 = min(max(x1, 0.0), width - 1.0), min(max(x2, 0.0), width - 1.0)
    y1, y2 = min(max(y1, 0.0), height - 1.0), min(max(y2, 0.0), height - 1.0)
    if x2 <= x1 or y2 <= y1:
        return None, outside
    return np.array([x1, y1, x2, y2], dtype=np.float32), outside


def load_coco(ann_path: str | Path, image_dir: str | Path | None = None, split: str = "train",
              reference: CocoDetectionData | None = None) -> CocoDetectionData:
    """Read and clean one split.

    reference: the training split; the classes are then taken from it, and every category this
    split uses must be one of them (same id and name). Without it the classes are this file's
    categories minus Roboflow's placeholder."""
    ann_path = Path(ann_path)
    image_dir = Path(image_dir) if image_dir is not None else ann_path.parent
    data = _read_json(ann_path)
    categories = _categories(data, ann_path)
    images = _images_by_id(data, ann_path)
    per_image, used = _annotations_by_image(data, images, {c["id"] for c in categories}, ann_path)
    placeholders = placeholder_category_ids(categories, used)
    stats = DataStats(placeholder_categories=[c["name"] for c in categories if c["id"] in placeholders])
    classes, category_ids = _classes(categories, used, placeholders, reference, ann_path)
    label_of = {cid: i for i, cid in enumerate(category_ids)}

    missing: list[str] = []
    records: list[ImageRecord] = []
    ids = sorted(images, key=lambda k: (isinstance(k, str), k))
    for image_id in ids:
        entry = images[image_id]
        path = _image_path(image_dir, entry["file_name"])
        if path is None:
            missing.append(entry["file_name"])
            continue
        record = _image_record(len(records), image_id, entry, path, per_image[image_id], label_of, placeholders,
                               stats, ann_path)
        stats.boxes += record.num_boxes
        stats.images_without_boxes += int(record.num_boxes == 0)
        records.append(record)
    stats.images = len(records)
    _check_split(records, missing, stats, ann_path, image_dir, split)
    return CocoDetectionData(split=split, ann_path=ann_path, image_dir=image_dir, classes=classes,
                             category_ids=category_ids, images=records, stats=stats)


def _images_by_id(data: dict, ann_path: Path) -> dict[Any, dict]:
    """The file's image entries by id, each checked to have an id and a file name."""
    images: dict[Any, dict] = {}
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise GlipError(f"{ann_path}: images[{i}] is not an object")
        if "id" not in entry or not _is_id(entry["id"]):
            raise GlipError(f"{ann_path}: images[{i}] has no 'id'")
        if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            raise GlipError(f"{ann_path}: image {excerpt(entry['id'])} has no 'file_name'")
        if entry["id"] in images:
            raise GlipError(f"{ann_path}: duplicate image id {excerpt(entry['id'])}")
        images[entry["id"]] = entry
    return images


def _annotations_by_image(data: dict, images: dict[Any, dict], category_ids: set, ann_path: Path
                          ) -> tuple[dict[Any, list[dict]], set]:
    """The annotations of each image, each checked (ids, image, category, bbox present), and the
    category ids in use."""
    used: set = set()
    per_image: dict[Any, list[dict]] = {k: [] for k in images}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise GlipError(f"{ann_path}: annotations[{i}] is not an object")
        ident = ann.get("id", f"#{i}")
        if not _is_id(ident):
            raise GlipError(f"{ann_path}: annotations[{i}] has an 'id' that is not a number or string")
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise GlipError(f"{ann_path}: annotation {ident} has no {excerpt(key)}")
            if key != "bbox" and not _is_id(ann[key]):
                raise GlipError(f"{ann_path}: annotation {ident}: {key} must be a number or string, "
                                f"got {type(ann[key]).__name__}")
        if ann["image_id"] not in images:
            raise GlipError(f"{ann_path}: annotation {ident} refers to unknown image id {excerpt(ann['image_id'])}")
        if ann["category_id"] not in category_ids:
            raise GlipError(f"{ann_path}: annotation {ident} has unknown category id {excerpt(ann['category_id'])}")
        used.add(ann["category_id"])
        per_image[ann["image_id"]].append(ann)
    return per_image, used


def _classes(categories: list[dict], used: set, placeholders: set, reference: CocoDetectionData | None,
             ann_path: Path) -> tuple[list[str], list[Any]]:
    """(class names, their category ids): the reference's, checked against this file's categories,
    else this file's categories minus the placeholder (names unique)."""
    if reference is None:
        kept = [c for c in categories if c["id"] not in placeholders]
        if not kept:
            raise GlipError(f"{ann_path}: no categories besides the placeholder")
        named: dict[str, Any] = {}
        for cat in kept:
            if cat["name"] in named:
                raise GlipError(f"{ann_path}: categories {named[cat['name']]} and {cat['id']} are both named "
                                f"{excerpt(cat['name'])}; a class name is its prompt, so names must be unique "
                                "(merge or rename them)")
            named[cat["name"]] = cat["id"]
        classes = [c["name"] for c in kept]
        category_ids = [c["id"] for c in kept]
    else:
        classes, category_ids = list(reference.classes), list(reference.category_ids)
        ref_names = dict(zip(category_ids, classes))
        for cat in categories:
            if cat["id"] in placeholders:
                continue
            if cat["id"] not in ref_names:
                if cat["id"] in used:
                    raise GlipError(f"{ann_path}: category {cat['id']} {excerpt(cat['name'])} is not a category of "
                                    f"the training split ({reference.ann_path})")
                continue
            if ref_names[cat["id"]] != cat["name"]:
                raise GlipError(f"{ann_path}: category {cat['id']} is {excerpt(cat['name'])} here but "
                                f"{excerpt(ref_names[cat['id']])} in the training split")
    return classes, category_ids


def _image_record(index: int, image_id: Any, entry: dict, path: Path, annotations: list[dict],
                  label_of: dict[Any, int], placeholders: set, stats: DataStats, ann_path: Path) -> ImageRecord:
    """One image's record: its displayed size and cleaned boxes (crowd regions apart); counts go to `stats`."""
    width, height = _displayed_size(path)
    jw, jh = _number(entry.get("width")), _number(entry.get("height"))
    if jw is not None and jh is not None and (int(jw), int(jh)) != (width, height):
        stats.size_mismatch += 1
        if stats.size_mismatch == 1:
            log.warning("%s: image %s is %dx%d but the JSON says %dx%d; its boxes are read in the "
                        "displayed (EXIF-oriented) frame", ann_path, entry["file_name"], width, height,
                        int(jw), int(jh))
    boxes, labels, areas, crowd = [], [], [], []
    for ann in annotations:
        stats.annotations += 1
        if ann["category_id"] in placeholders:
            raise GlipError(f"{ann_path}: annotation {ann.get('id')} uses placeholder category "
                            f"{ann['category_id']}")
        try:
            box, outside = clean_box(ann["bbox"], width, height)
        except ValueError as exc:
            raise GlipError(f"{ann_path}: annotation {ann.get('id', '?')}: {exc}") from None
        if box is None:
            stats.degenerate += 1
            continue
        stats.clipped += int(outside)
        if ann["category_id"] not in label_of:
            raise GlipError(f"{ann_path}: annotation {ann.get('id')} has category {ann['category_id']}, "
                            "which is not a class of the training split")
        if ann.get("iscrowd", 0) in (1, True):
            stats.crowd += 1
            crowd.append((box, label_of[ann["category_id"]]))
            continue
        boxes.append(box)
        labels.append(label_of[ann["category_id"]])
        area = _number(ann.get("area"))
        w, h = float(box[2] - box[0] + 1), float(box[3] - box[1] + 1)
        areas.append(area if area is not None and area > 0 and not outside else w * h)
    return ImageRecord(
        index=index, image_id=image_id, file_name=entry["file_name"], path=path,
        width=width, height=height,
        boxes=np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        areas=np.asarray(areas, dtype=np.float32),
        crowd_boxes=np.stack([b for b, _ in crowd]).astype(np.float32) if crowd else np.zeros((0, 4), np.float32),
        crowd_labels=np.asarray([lab for _, lab in crowd], dtype=np.int64))


def _check_split(records: list[ImageRecord], missing: list[str], stats: DataStats, ann_path: Path,
                 image_dir: Path, split: str) -> None:
    """Refuse a split with missing image files, no images or not a single usable box."""
    if missing:
        raise GlipError(f"{ann_path}: {len(missing)} image file{'s' if len(missing) != 1 else ''} missing from "
                        f"{image_dir} (e.g. {excerpt(missing[0])})")
    if not records:
        raise GlipError(f"{ann_path}: no images (the {split} split is empty)")
    if stats.boxes == 0:
        detail = (f"{stats.annotations} annotations, none usable: {stats.degenerate} without area, "
                  f"{stats.crowd} crowd" if stats.annotations else "no annotations at all")
        purpose = "to train on" if split == "train" else "to evaluate against"
        raise GlipError(f"{ann_path}: no boxes {purpose} in the {len(records)} images of the {split} split "
                        f"({detail})")


def coco_ground_truth(data: CocoDetectionData) -> dict[str, Any]:
    """The cleaned split as a COCO ground-truth dict for pycocotools: image ids are the record
    indices, category ids are class index + 1, boxes the cleaned ones (`w = x2 - x1 + 1`)."""
    annotations = []
    for record in data.images:
        for box, label, area in zip(record.boxes, record.labels, record.areas):
            annotations.append(_gt_entry(len(annotations) + 1, record.index, box, int(label) + 1, float(area), 0))
        for box, label in zip(record.crowd_boxes, record.crowd_labels):
            w, h = float(box[2] - box[0] + 1), float(box[3] - box[1] + 1)
            annotations.append(_gt_entry(len(annotations) + 1, record.index, box, int(label) + 1, w * h, 1))
    return {
        "images": [{"id": r.index, "width": r.width, "height": r.height, "file_name": r.file_name}
                   for r in data.images],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(data.classes)],
        "annotations": annotations,
    }


def _gt_entry(ann_id: int, image: int, box: np.ndarray, category: int, area: float, crowd: int) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"id": ann_id, "image_id": image, "category_id": category,
            "bbox": [x1, y1, x2 - x1 + 1.0, y2 - y1 + 1.0], "area": area, "iscrowd": crowd}
