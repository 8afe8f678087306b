"""The one result type of box evaluation: summary numbers by name, AP per category, counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DetectionMetrics:
    """Box metrics of detections against a ground truth.

    metrics: the summary numbers by name, fractions in [0, 1], -1 where undefined (no ground truth of
        that kind, e.g. no small objects): pycocotools' 12 (`evaluation.coco.METRIC_NAMES`) for COCO
        and ODinW, AP, AP50, AP75, APs/m/l, APr/c/f for LVIS (`evaluation.lvis.METRIC_NAMES`).
    per_category: AP (IoU 0.50:0.95) per category id, or per class name where the caller names the
        categories (validation during training); -1 for a category without ground truth.
    """

    metrics: Mapping[str, float]
    per_category: Mapping[int | str, float] = field(default_factory=dict)
    num_images: int = 0
    num_detections: int = 0

    @property
    def ap(self) -> float:
        return self.metrics["AP"]

    @property
    def ap50(self) -> float:
        return self.metrics["AP50"]

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics), "per_category": {str(k): v for k, v in self.per_category.items()},
                "num_images": self.num_images, "num_detections": self.num_detections}
