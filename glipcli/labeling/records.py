"""One image's labels as the model gave them: what the journal stores and the writers read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LabelBox:
    """A labelled box: `class_index` into the ontology, xyxy in the image's displayed pixels
    (inclusive corners, the official GLIP convention: width = x1 - x0 + 1), the model's score."""

    class_index: int
    box_xyxy: tuple[float, float, float, float]
    score: float

    @property
    def width(self) -> float:
        return self.box_xyxy[2] - self.box_xyxy[0] + 1.0

    @property
    def height(self) -> float:
        return self.box_xyxy[3] - self.box_xyxy[1] + 1.0


@dataclass(frozen=True)
class ImageLabels:
    """An image and its boxes (best score first).

    key: the image's resolved path, which a resumed run matches; image: the path as given;
    width/height: the displayed size (EXIF orientation applied), which the boxes are in."""

    key: str
    image: str
    width: int
    height: int
    boxes: tuple[LabelBox, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "image": self.image, "width": self.width, "height": self.height,
                "boxes": [[b.class_index, *b.box_xyxy, b.score] for b in self.boxes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ImageLabels":
        boxes = tuple(LabelBox(int(row[0]), (float(row[1]), float(row[2]), float(row[3]), float(row[4])),
                               float(row[5])) for row in data["boxes"])
        return cls(str(data["key"]), str(data["image"]), int(data["width"]), int(data["height"]), boxes)

    def with_boxes(self, boxes: tuple[LabelBox, ...]) -> "ImageLabels":
        return ImageLabels(self.key, self.image, self.width, self.height, boxes)
