"""COCO box AP of detections against a COCO ground truth (pycocotools, its default protocol).

A pure function: no model. Detections are pycocotools results
`{"image_id", "category_id", "bbox": [x, y, w, h], "score"}` (see `glipcli.coco_results.coco_results` for
the official GLIP xyxy -> xywh convention). The protocol is pycocotools' `COCOeval(iouType="bbox")`
with its defaults, the one the official GLIP evaluation uses for COCO and ODinW: IoU 0.50:0.05:0.95,
101 recall points, at most 100 detections per image, crowd regions ignored, categories without
ground truth left out of the means. pycocotools' prints are swallowed.

Metrics are fractions in [0, 1]; -1 where undefined (pycocotools' convention: no ground truth of that
kind, e.g. no small objects). With no detections at all every defined metric is 0.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glipcli.errors import GlipError
from glipcli.evaluation.metrics import DetectionMetrics

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
AREA_RANGES = {"all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e5 ** 2)}
_METRIC_AREA = {"AP": "all", "AP50": "all", "AP75": "all", "APs": "small", "APm": "medium", "APl": "large",
                "AR1": "all", "AR10": "all", "AR100": "all", "ARs": "small", "ARm": "medium", "ARl": "large"}


def read_annotation_json(path: Path, kind: str) -> Any:
    """The parsed JSON of a `kind` ("COCO", "LVIS") annotation file; a GlipError naming the file if
    it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GlipError(f"{path}: no such {kind} annotation file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GlipError(f"{path}: not a readable {kind} JSON file ({str(exc).splitlines()[0][:160]})") from None


def load_ground_truth(source: str | Path | Mapping) -> dict:
    """A COCO ground truth (a file or its parsed dict), checked and normalised for pycocotools: every
    annotation gets `iscrowd` (default 0) and `area` (default w*h); a copy, the input is not changed."""
    if isinstance(source, Mapping):
        data, where = copy.deepcopy(dict(source)), "ground truth"
    else:
        where = str(source)
        data = read_annotation_json(Path(source), "COCO")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                       "categories")):
        raise GlipError(f"{where}: not a COCO ground truth (needs 'images', 'annotations' and 'categories' lists)")
    for section in ("images", "categories", "annotations"):
        for i, entry in enumerate(data[section]):
            if not isinstance(entry, dict):
                raise GlipError(f"{where}: {section}[{i}] is not an object")
            if ("id" in entry or section != "annotations") and not _is_id(entry.get("id")):
                raise GlipError(f"{where}: {section}[{i}] needs an 'id' (a number or string)")
            if section == "categories" and not isinstance(entry.get("name"), str):
                raise GlipError(f"{where}: category {entry['id']!r} has no name")
            if section == "annotations":
                for key in ("image_id", "category_id"):
                    if not _is_id(entry.get(key)):
                        raise GlipError(f"{where}: annotations[{i}] needs an {key!r} (a number or string)")
    try:
        image_ids = {im["id"] for im in data["images"]}
        category_ids = {c["id"] for c in data["categories"]}
        for i, ann in enumerate(data["annotations"]):
            x, y, w, h = (float(v) for v in ann["bbox"])
            if ann["image_id"] not in image_ids:
                raise GlipError(f"{where}: annotation {ann.get('id', i)} refers to unknown image {ann['image_id']!r}")
            if ann["category_id"] not in category_ids:
                raise GlipError(f"{where}: annotation {ann.get('id', i)} has unknown category {ann['category_id']!r}")
            ann.setdefault("iscrowd", 0)
            if ann.get("area") is None:
                ann["area"] = w * h
            ann.setdefault("id", i + 1)
    except (KeyError, TypeError, ValueError) as exc:
        raise GlipError(f"{where}: malformed image, category or annotation entry ({exc!r})") from None
    if len({a["id"] for a in data["annotations"]}) != len(data["annotations"]):
        raise GlipError(f"{where}: annotation ids are not unique")
    return data


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def check_detections(detections: Sequence[Mapping], image_ids: set, where: str = "detections") -> list[dict]:
    """The detections as plain dicts, checked: keys, a finite 4-number bbox, known image ids."""
    out = []
    for i, det in enumerate(detections):
        try:
            bbox = [float(v) for v in det["bbox"]]
            score = float(det["score"])
            item = {"image_id": det["image_id"], "category_id": det["category_id"], "bbox": bbox, "score": score}
        except (KeyError, TypeError, ValueError) as exc:
            raise GlipError(f"{where}[{i}]: needs image_id, category_id, bbox [x, y, w, h] and score "
                            f"({exc!r})") from None
        if len(bbox) != 4 or not all(math.isfinite(v) for v in (*bbox, score)):
            raise GlipError(f"{where}[{i}]: bbox must be 4 finite numbers [x, y, w, h] and score finite")
        if item["image_id"] not in image_ids:
            raise GlipError(f"{where}[{i}]: image_id {item['image_id']!r} is not an image of the ground truth")
        out.append(item)
    return out


def _empty_metrics(gt: dict, image_ids: set) -> DetectionMetrics:
    """What pycocotools gives when nothing is detected: 0 where there is ground truth, else -1."""
    anns = [a for a in gt["annotations"] if a["image_id"] in image_ids and not a.get("iscrowd")]
    metrics = {}
    for name in METRIC_NAMES:
        lo, hi = AREA_RANGES[_METRIC_AREA[name]]
        metrics[name] = 0.0 if any(lo <= a["area"] <= hi for a in anns) else -1.0
    cats_with_gt = {a["category_id"] for a in anns}
    per_category = {c["id"]: (0.0 if c["id"] in cats_with_gt else -1.0) for c in gt["categories"]}
    return DetectionMetrics(metrics, per_category, len(image_ids), 0)


def coco_box_ap(ground_truth: str | Path | Mapping, detections: Sequence[Mapping],
                image_ids: Sequence | None = None) -> DetectionMetrics:
    """COCO box metrics of `detections` on the images `image_ids` of `ground_truth` (all by default)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_data = load_ground_truth(ground_truth)
    all_ids = [im["id"] for im in gt_data["images"]]
    ids = list(all_ids) if image_ids is None else list(image_ids)
    unknown = set(ids) - set(all_ids)
    if unknown:
        raise GlipError(f"image ids {sorted(unknown)[:5]} are not images of the ground truth")
    dets = check_detections(detections, set(all_ids))
    dets = [d for d in dets if d["image_id"] in set(ids)]
    if not dets:
        return _empty_metrics(gt_data, set(ids))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(dets))
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    per_category = {}
    for k, cat in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        per_category[int(cat)] = float(np.mean(valid)) if valid.size else -1.0
    return DetectionMetrics(metrics, per_category, len(ids), len(dets))
