"""LVIS box AP with the fixed-AP protocol (Dave et al. 2021), as the official GLIP evaluation reports it.

A pure function over detections and an LVIS v1 ground truth (no model). Our own implementation of
the LVIS API's box evaluation with the fixed-AP detection budget:

- Budget: the 10,000 highest-scoring detections of each category over the whole evaluated set are
  kept (`max_dets_per_category`), and there is NO per-image limit (the standard LVIS AP keeps 300 per
  image instead: pass `max_dets_per_category=None, max_dets_per_image=300`).
- Federated annotation: in an image, a detection of category c is evaluated only when c is annotated
  there (a positive: it has boxes) or listed in the image's `neg_category_ids` (verified absent); any
  other detection is dropped. Among the kept ones, an unmatched detection of a category in the
  image's `not_exhaustive_category_ids` is ignored (neither true nor false positive).
- Matching, per image and category, at each IoU threshold 0.50:0.05:0.95: detections in decreasing
  score order take the unmatched ground-truth box of highest IoU >= threshold, boxes inside the area
  range before those outside it (ties: the later box); there are no crowd regions. A detection matched
  to an out-of-range box, or unmatched and itself out of range (area w*h), is ignored.
- Precision / recall per category: detections of all images pooled in score order (stable, images in
  ascending id order); precision made monotone; sampled at the 101 recall points 0:0.01:1 (0 past the
  highest recall). A category without ground truth in the evaluated images has no AP (left out).
- AP is the mean over IoU thresholds and categories; AP50/AP75 at one threshold; APs/APm/APl over
  ground-truth areas [0, 32^2], [32^2, 96^2], [96^2, inf) (the annotation's `area`); APr/APc/APf over
  the categories whose `frequency` is r (rare), c (common), f (frequent).

With every category exhaustively annotated and every absent category listed as negative, this equals
pycocotools' COCO AP with no per-image limit (tests/test_bench_eval.py checks that).
Metrics are fractions in [0, 1]; -1 where undefined.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glipcli.errors import GlipError
from glipcli.evaluation.coco import AREA_RANGES, check_detections, read_annotation_json
from glipcli.evaluation.metrics import DetectionMetrics

FIXED_AP_DETS_PER_CATEGORY = 10_000
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
FREQUENCIES = ("r", "c", "f")
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
_AREAS = ("all", "small", "medium", "large")


@dataclass(frozen=True)
class LvisGroundTruth:
    """An LVIS v1 ground truth, indexed."""

    image_ids: tuple[int, ...]
    category_ids: tuple[int, ...]
    frequency: Mapping[int, str]
    boxes: Mapping[tuple[int, int], np.ndarray]  # (image, category) -> [G, 4] xywh
    areas: Mapping[tuple[int, int], np.ndarray]  # (image, category) -> [G]
    negative: Mapping[int, frozenset]  # image -> neg_category_ids
    not_exhaustive: Mapping[int, frozenset]  # image -> not_exhaustive_category_ids
    positive: Mapping[int, frozenset]  # image -> categories with boxes in it

    @classmethod
    def load(cls, source: str | Path | Mapping) -> "LvisGroundTruth":
        if isinstance(source, Mapping):
            data, where = source, "LVIS ground truth"
        else:
            where = str(source)
            data = read_annotation_json(Path(source), "LVIS")
        if not isinstance(data, Mapping) or not all(isinstance(data.get(k), list)
                                                    for k in ("images", "annotations", "categories")):
            raise GlipError(f"{where}: not an LVIS ground truth (needs 'images', 'annotations', 'categories')")
        try:
            frequency = {int(c["id"]): str(c["frequency"]) for c in data["categories"]}
            negative, not_exhaustive = {}, {}
            for im in data["images"]:
                negative[int(im["id"])] = frozenset(int(c) for c in im["neg_category_ids"])
                not_exhaustive[int(im["id"])] = frozenset(int(c) for c in im["not_exhaustive_category_ids"])
            grouped: dict[tuple[int, int], list] = defaultdict(list)
            for ann in data["annotations"]:
                img, cat = int(ann["image_id"]), int(ann["category_id"])
                if img not in negative:
                    raise GlipError(f"{where}: annotation {ann.get('id')} refers to unknown image {img}")
                if cat not in frequency:
                    raise GlipError(f"{where}: annotation {ann.get('id')} has unknown category {cat}")
                x, y, w, h = (float(v) for v in ann["bbox"])
                area = float(ann["area"]) if ann.get("area") is not None else w * h
                grouped[img, cat].append((x, y, w, h, area))
        except KeyError as exc:
            raise GlipError(f"{where}: not LVIS v1 format: missing key {exc} (images need neg_category_ids and "
                            "not_exhaustive_category_ids, categories need frequency)") from None
        except (TypeError, ValueError) as exc:
            raise GlipError(f"{where}: malformed LVIS entry ({exc!r})") from None
        bad = sorted({f for f in frequency.values() if f not in FREQUENCIES})
        if bad:
            raise GlipError(f"{where}: category frequency must be r, c or f (got {bad})")
        boxes = {k: np.asarray([v[:4] for v in vals], np.float64) for k, vals in grouped.items()}
        areas = {k: np.asarray([v[4] for v in vals], np.float64) for k, vals in grouped.items()}
        positive: dict[int, set] = defaultdict(set)
        for img, cat in grouped:
            positive[img].add(cat)
        return cls(tuple(sorted(negative)), tuple(sorted(frequency)), frequency, boxes, areas, negative,
                   not_exhaustive, {img: frozenset(c) for img, c in positive.items()})


def _iou_xywh(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU matrix [D, G] of xywh boxes (continuous coordinates, area w*h: pycocotools' box IoU)."""
    dx0, dy0 = dt[:, 0:1], dt[:, 1:2]
    dx1, dy1 = dx0 + dt[:, 2:3], dy0 + dt[:, 3:4]
    gx0, gy0 = gt[:, 0], gt[:, 1]
    gx1, gy1 = gx0 + gt[:, 2], gy0 + gt[:, 3]
    iw = np.clip(np.minimum(dx1, gx1) - np.maximum(dx0, gx0), 0, None)
    ih = np.clip(np.minimum(dy1, gy1) - np.maximum(dy0, gy0), 0, None)
    inter = iw * ih
    union = dt[:, 2:3] * dt[:, 3:4] + gt[:, 2] * gt[:, 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _match(ious: np.ndarray, gt_ignore: np.ndarray) -> np.ndarray:
    """Greedy matching at every IoU threshold. ious: [D, G] (detections in score order, ground truth in
    any order); gt_ignore: [G] bool. Returns [T, D] int: index of the matched box, -1 if none."""
    num_t, (num_d, num_g) = len(IOU_THRESHOLDS), ious.shape
    matched = np.full((num_t, num_d), -1, np.int64)
    if num_g == 0 or num_d == 0:
        return matched
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]
    taken = np.zeros((num_t, num_g), bool)
    regular, ignored = ~gt_ignore[None, :], gt_ignore[None, :]
    rows = np.arange(num_t)
    for d in range(num_d):
        iou = ious[d][None, :]
        free = (iou >= thresholds) & ~taken
        reg = free & regular
        cand = np.where(reg.any(axis=1, keepdims=True), reg, free & ignored)
        has = cand.any(axis=1)
        if not has.any():
            continue
        score = np.where(cand, iou, -1.0)
        best = num_g - 1 - np.argmax(score[:, ::-1], axis=1)  # highest IoU, ties: the later box
        matched[has, d] = best[has]
        taken[rows[has], best[has]] = True
    return matched


def _keep_top(dets: list[dict], per_category: int | None, per_image: int | None) -> list[dict]:
    if per_image is not None:
        by_image: dict[Any, list] = defaultdict(list)
        for d in dets:
            by_image[d["image_id"]].append(d)
        dets = [d for group in by_image.values()
                for d in sorted(group, key=lambda d: -d["score"])[:per_image]]
    if per_category is not None:
        by_cat: dict[Any, list] = defaultdict(list)
        for d in dets:
            by_cat[d["category_id"]].append(d)
        dets = [d for group in by_cat.values()
                for d in sorted(group, key=lambda d: -d["score"])[:per_category]]
    return dets


def lvis_box_ap(ground_truth: str | Path | Mapping | LvisGroundTruth, detections: Sequence[Mapping],
                max_dets_per_category: int | None = FIXED_AP_DETS_PER_CATEGORY,
                max_dets_per_image: int | None = None) -> DetectionMetrics:
    """LVIS box metrics of `detections` (pycocotools result dicts, bbox xywh) on every image of the
    ground truth, with the fixed-AP budget by default (see the module docstring)."""
    gt = ground_truth if isinstance(ground_truth, LvisGroundTruth) else LvisGroundTruth.load(ground_truth)
    image_set = set(gt.image_ids)
    dets = check_detections(detections, image_set)
    for d in dets:
        d["image_id"], d["category_id"] = int(d["image_id"]), int(d["category_id"])
    num_input = len(dets)
    dets = _keep_top(dets, max_dets_per_category, max_dets_per_image)
    categories = set(gt.category_ids)
    grouped: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for d in dets:
        img, cat = d["image_id"], d["category_id"]
        if cat in categories and (cat in gt.negative[img] or cat in gt.positive.get(img, ())):
            grouped[img, cat].append(d)

    num_t, num_r, num_a = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(_AREAS)
    precision = -np.ones((num_t, num_r, len(gt.category_ids), num_a))
    img_rank = {img: i for i, img in enumerate(gt.image_ids)}
    images_of: dict[int, set] = defaultdict(set)
    for img, cat in (*gt.boxes, *grouped):
        images_of[cat].add(img)
    for k, cat in enumerate(gt.category_ids):
        pairs = sorted(images_of.get(cat, ()), key=img_rank.__getitem__)
        if not pairs:
            continue
        prepared = []  # per image: (gt areas, det scores, det areas, IoU [D, G], not exhaustive?)
        for img in pairs:
            gareas = gt.areas.get((img, cat), np.zeros((0,)))
            dlist = sorted(grouped.get((img, cat), []), key=lambda d: -d["score"])
            dboxes = np.asarray([d["bbox"] for d in dlist], np.float64).reshape(-1, 4)
            gboxes = gt.boxes.get((img, cat), np.zeros((0, 4)))
            prepared.append((gareas, np.asarray([d["score"] for d in dlist], np.float64),
                             dboxes[:, 2] * dboxes[:, 3], _iou_xywh(dboxes, gboxes),
                             cat in gt.not_exhaustive[img]))
        for a, area in enumerate(_AREAS):
            lo, hi = AREA_RANGES[area]
            scores, tps, fps, num_gt = [], [], [], 0
            for gareas, dscores, dareas, ious, not_exhaustive in prepared:
                gt_ignore = (gareas < lo) | (gareas > hi)
                num_gt += int((~gt_ignore).sum())
                if not len(dscores):
                    continue
                match = _match(ious, gt_ignore)
                matched = match >= 0
                matched_ignored = matched & gt_ignore[np.clip(match, 0, None)] if len(gareas) else matched
                unmatched_ignored = ~matched & ((dareas < lo) | (dareas > hi) | not_exhaustive)[None, :]
                ignore = matched_ignored | unmatched_ignored
                tps.append(matched & ~ignore)
                fps.append(~matched & ~ignore)
                scores.append(dscores)
            if num_gt == 0:
                continue
            if not scores:
                precision[:, :, k, a] = 0.0
                continue
            order = np.argsort(-np.concatenate(scores), kind="mergesort")
            tp = np.cumsum(np.concatenate(tps, axis=1)[:, order], axis=1, dtype=np.float64)
            fp = np.cumsum(np.concatenate(fps, axis=1)[:, order], axis=1, dtype=np.float64)
            for t in range(num_t):
                precision[t, :, k, a] = _precision_at_recalls(tp[t], fp[t], num_gt)

    metrics = _summarize(precision, gt)
    per_category = {}
    for k, cat in enumerate(gt.category_ids):
        p = precision[:, :, k, 0]
        per_category[cat] = float(p.mean()) if (p > -1).any() else -1.0
    return DetectionMetrics(metrics, per_category, len(gt.image_ids), num_input)


def _precision_at_recalls(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> np.ndarray:
    """Precision at the 101 recall points (monotone envelope; 0 past the highest recall)."""
    recall = tp / num_gt
    prec = tp / (tp + fp + np.spacing(1))
    prec = np.maximum.accumulate(prec[::-1])[::-1] if prec.size else prec
    out = np.zeros(len(RECALL_THRESHOLDS))
    idx = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    valid = idx < len(prec)
    out[valid] = prec[idx[valid]]
    return out


def _mean(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _summarize(precision: np.ndarray, gt: LvisGroundTruth) -> dict[str, float]:
    t50 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5)))
    t75 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.75)))
    metrics = {
        "AP": _mean(precision[:, :, :, 0]),
        "AP50": _mean(precision[t50, :, :, 0]),
        "AP75": _mean(precision[t75, :, :, 0]),
        "APs": _mean(precision[:, :, :, 1]),
        "APm": _mean(precision[:, :, :, 2]),
        "APl": _mean(precision[:, :, :, 3]),
    }
    for freq in FREQUENCIES:
        idx = [k for k, cat in enumerate(gt.category_ids) if gt.frequency[cat] == freq]
        metrics[f"AP{freq}"] = _mean(precision[:, :, idx, 0]) if idx else -1.0
    for name, value in metrics.items():
        if math.isnan(value):
            metrics[name] = -1.0
    return metrics
