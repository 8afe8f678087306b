"""Choosing which of the model's boxes become labels: minimum size, class-agnostic NMS, a cap.

Per-class thresholds and suppression phrases act earlier, inside detection (`glipcli.chunked_detection`);
these filters act on the journal's records when the dataset is written, so changing them and
writing again (`--overwrite`) does not run the model again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import nms

from glipcli.errors import GlipError
from glipcli.labeling.records import ImageLabels


@dataclass(frozen=True)
class LabelFilters:
    """min_box_size: drop boxes narrower or lower than this many pixels. agnostic_nms: IoU above
    which a box is dropped for a higher-scoring box of ANY class (None: boxes of different
    classes may overlap). max_boxes: keep at most this many boxes per image, best first."""

    min_box_size: float = 0.0
    agnostic_nms: float | None = None
    max_boxes: int | None = None

    def __post_init__(self) -> None:
        if self.min_box_size < 0:
            raise GlipError(f"--min-box-size must be at least 0 (got {self.min_box_size})")
        if self.agnostic_nms is not None and not 0.0 < self.agnostic_nms <= 1.0:
            raise GlipError(f"--agnostic-nms is an IoU in (0, 1] (got {self.agnostic_nms})")
        if self.max_boxes is not None and self.max_boxes < 1:
            raise GlipError(f"--max-boxes must be at least 1 (got {self.max_boxes})")

    def apply(self, labels: ImageLabels) -> ImageLabels:
        boxes = sorted(labels.boxes, key=lambda b: -b.score)
        boxes = [b for b in boxes if b.width >= self.min_box_size and b.height >= self.min_box_size]
        if self.agnostic_nms is not None and len(boxes) > 1:
            xyxy = torch.tensor([b.box_xyxy for b in boxes], dtype=torch.float32)
            scores = torch.tensor([b.score for b in boxes], dtype=torch.float32)
            # torchvision's nms measures areas without the +1 of inclusive corners; shifting the far
            # corners by one pixel gives the official (maskrcnn_benchmark) IoU.
            xyxy[:, 2:] += 1.0
            keep = sorted(nms(xyxy, scores, self.agnostic_nms).tolist())
            boxes = [boxes[i] for i in keep]
        if self.max_boxes is not None:
            boxes = boxes[:self.max_boxes]
        return labels.with_boxes(tuple(boxes))
