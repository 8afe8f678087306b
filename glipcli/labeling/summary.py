"""What a labelling run produced: per-class counts, per-split sizes and score histograms,
written as `labels.json` (for scripts) and `labels.md` (to read)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from glipcli.labeling.records import ImageLabels

HISTOGRAM_BINS = 10  # score bins of width 0.1 over [0, 1]


def score_histogram(scores: Sequence[float], bins: int = HISTOGRAM_BINS) -> list[int]:
    """Counts of scores in [0, 1/bins), [1/bins, 2/bins), ..., [1 - 1/bins, 1]."""
    counts = [0] * bins
    for score in scores:
        counts[score_bin(score, bins)] += 1
    return counts


def score_bin(score: float, bins: int = HISTOGRAM_BINS) -> int:
    return min(bins - 1, max(0, int(score * bins)))


@dataclass
class ClassCounts:
    name: str
    boxes: int = 0
    images: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)


@dataclass
class LabelSummary:
    """Counts over the written dataset (after the filters), plus what was left out."""

    format: str
    images: int
    boxes: int
    negatives: int  # images kept without boxes
    dropped_empty: int  # images without boxes left out (no --keep-empty)
    unreadable: list[str]
    splits: dict[str, dict[str, int]]
    classes: list[ClassCounts]
    histogram: list[int]
    settings: dict[str, Any]
    written: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        edges = [f"{i / HISTOGRAM_BINS:.1f}" for i in range(HISTOGRAM_BINS + 1)]
        lines = ["# Labels", "",
                 f"{self.images} images ({self.negatives} without boxes), {self.boxes} boxes, "
                 f"format {self.format}.", ""]
        if self.dropped_empty:
            lines += [f"{self.dropped_empty} images where nothing was found were left out "
                      "(`--keep-empty` keeps them as negatives).", ""]
        if self.unreadable:
            lines += [f"{len(self.unreadable)} images could not be read and are not in the dataset:", ""]
            lines += [f"- `{name}`" for name in self.unreadable] + [""]
        lines += ["| split | images | boxes |", "|---|---:|---:|"]
        lines += [f"| {name} | {s['images']} | {s['boxes']} |" for name, s in self.splits.items()]
        lines += ["", "| class | boxes | images | mean boxes per image with the class |", "|---|---:|---:|---:|"]
        for c in self.classes:
            mean = f"{c.boxes / c.images:.2f}" if c.images else "-"
            lines.append(f"| {c.name} | {c.boxes} | {c.images} | {mean} |")
        lines += ["", "Scores of the written boxes:", "", "| score | " + " | ".join(c.name for c in self.classes)
                  + " | all |", "|---|" + "---:|" * (len(self.classes) + 1)]
        peak = max(self.histogram) or 1
        for b in range(HISTOGRAM_BINS):
            row = [str(c.histogram[b]) for c in self.classes]
            bar = "#" * round(20 * self.histogram[b] / peak)
            lines.append(f"| {edges[b]}-{edges[b + 1]} | " + " | ".join(row) + f" | {self.histogram[b]} `{bar}` |")
        lines += ["", "Settings:", "", "```json"]
        lines += [json.dumps(self.settings, indent=2), "```", ""]
        return "\n".join(lines)


def summarise(splits: dict[str, list[ImageLabels]], class_names: Sequence[str], *, fmt: str, dropped_empty: int,
              unreadable: Sequence[str], settings: dict[str, Any], written: Sequence[str]) -> LabelSummary:
    classes = [ClassCounts(name) for name in class_names]
    all_scores: list[float] = []
    images = boxes = negatives = 0
    split_counts = {}
    for name, members in splits.items():
        split_boxes = sum(len(m.boxes) for m in members)
        split_counts[name] = {"images": len(members), "boxes": split_boxes}
        images += len(members)
        boxes += split_boxes
        for labels in members:
            negatives += int(not labels.boxes)
            for index in {b.class_index for b in labels.boxes}:
                classes[index].images += 1
            for box in labels.boxes:
                counts = classes[box.class_index]
                counts.boxes += 1
                counts.histogram[score_bin(box.score)] += 1
                all_scores.append(box.score)
    return LabelSummary(format=fmt, images=images, boxes=boxes, negatives=negatives, dropped_empty=dropped_empty,
                        unreadable=list(unreadable), splits=split_counts, classes=classes,
                        histogram=score_histogram(all_scores), settings=dict(settings), written=list(written))
