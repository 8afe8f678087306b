"""Training-time augmentation, the official GLIP defaults: multi-scale resize + horizontal flip.

Official (`maskrcnn_benchmark/data/transforms/build.py`, `AUGMENT.MULT_MIN_SIZE_TRAIN`
(480, 560, 640, 720, 800), `INPUT.MAX_SIZE_TRAIN` 1333, `AUGMENT.FLIP_PROB_TRAIN` 0.5):
Resize (short side drawn from the list, long side capped) -> RandomHorizontalFlip -> ToTensor ->
BGR-255 normalisation. The scales are given relative to the model's test size, so a reduced
model (`InputConfig(min_size=128, ...)`) trains at proportionally reduced scales: scale s is
`round(s / 800 * min_size)`, the cap is `max_size`.

Boxes follow the maskrcnn_benchmark `BoxList` rules: resizing multiplies x by new_w / w and y by
new_h / h; the flip maps `x1, x2` to `W - x2 - 1, W - x1 - 1` (inclusive-pixel convention). The
caption is unaffected by the flip (GLIP's prompts carry no left/right words for detection).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch
from PIL import Image

from glipcli.config import InputConfig
from glipcli.data.transforms import preprocess_image

OFFICIAL_TRAIN_SCALES = (480, 560, 640, 720, 800)
OFFICIAL_TEST_SIZE = 800


def train_min_sizes(input_cfg: InputConfig) -> tuple[int, ...]:
    """The official multi-scale short sides, scaled to the model's test short side."""
    factor = input_cfg.min_size / OFFICIAL_TEST_SIZE
    return tuple(max(1, round(s * factor)) for s in OFFICIAL_TRAIN_SCALES)


@dataclass(frozen=True)
class TrainTransform:
    """Resize to a random scale, flip with probability `flip_prob`, normalise.

    min_sizes: candidate short sides; max_size: the long-side cap (None = no cap)."""

    input_cfg: InputConfig
    min_sizes: tuple[int, ...]
    max_size: int | None
    flip_prob: float = 0.5

    @classmethod
    def official(cls, input_cfg: InputConfig, flip_prob: float = 0.5) -> "TrainTransform":
        return cls(input_cfg, train_min_sizes(input_cfg), input_cfg.max_size, flip_prob)

    def __call__(self, image: Image.Image, boxes: torch.Tensor, rng: random.Random
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """image: RGB (EXIF applied); boxes: float32 [N, 4] inclusive xyxy in image pixels.

        Returns (normalised BGR tensor [3, h, w], boxes [N, 4] in its pixels, (h, w)).
        Draws exactly two numbers from `rng` (scale, flip), whatever the outcome."""
        min_size = rng.choice(self.min_sizes)
        flip = rng.random() < self.flip_prob
        cfg = dataclasses.replace(self.input_cfg, min_size=min_size, max_size=self.max_size)
        tensor, (h, w) = preprocess_image(image, cfg)
        scale = torch.tensor([w / image.width, h / image.height, w / image.width, h / image.height],
                             dtype=torch.float32)
        boxes = boxes.to(torch.float32) * scale
        if flip:
            tensor = tensor.flip(-1)
            boxes = torch.stack([w - boxes[:, 2] - 1, boxes[:, 1], w - boxes[:, 0] - 1, boxes[:, 3]], dim=1)
        return tensor, boxes, (h, w)
