"""The training dataset: augmented images with their boxes and token targets, and the collate.

Every random choice of a sample (scale, flip) comes from a generator seeded with
(run seed, epoch, position in the epoch), so a sample is the same whichever process or data
worker loads it and whenever: an interrupted run resumes with exactly the samples it would have
seen, and the number of data workers changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from glipcli.data.coco import CocoDetectionData
from glipcli.data.train_transforms import TrainTransform
from glipcli.data.training_prompt import TrainingPrompt
from glipcli.data.transforms import batch_images, load_image
from glipcli.losses import TrainTarget


@dataclass
class TrainSample:
    image: torch.Tensor  # [3, h, w] normalised
    boxes: torch.Tensor  # [G, 4] xyxy in the resized image
    labels: torch.Tensor  # [G] class labels
    size: tuple[int, int]  # (h, w)
    index: int  # record index in the split


@dataclass
class TrainBatch:
    images: torch.Tensor  # [B, 3, H, W] padded
    sizes: list[tuple[int, int]]
    targets: list[TrainTarget]
    labels: list[torch.Tensor]
    indices: list[int]

    def to(self, device: torch.device) -> "TrainBatch":
        return TrainBatch(self.images.to(device), self.sizes,
                          [TrainTarget(t.boxes.to(device), t.positive_map.to(device)) for t in self.targets],
                          [lab.to(device) for lab in self.labels], self.indices)


def sample_rng_seed(seed: int, epoch: int, position: int) -> str:
    """The seed of one sample's generator (a string: `random.Random` hashes it with SHA-512,
    independent of PYTHONHASHSEED)."""
    return f"glip-train/{seed}/{epoch}/{position}"


class TrainDataset(Dataset):
    """Items are addressed by `(epoch, position, record index)` triples (see `EpochBatches`)."""

    def __init__(self, data: CocoDetectionData, transform: TrainTransform, seed: int):
        self.data = data
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data.images)

    def __getitem__(self, key: tuple[int, int, int]) -> TrainSample:
        import random

        epoch, position, index = key
        record = self.data.images[index]
        image = load_image(record.path)
        rng = random.Random(sample_rng_seed(self.seed, epoch, position))
        boxes = torch.from_numpy(record.boxes.copy())
        tensor, boxes, size = self.transform(image, boxes, rng)
        return TrainSample(tensor, boxes, torch.from_numpy(record.labels.copy()), size, index)


class TrainCollate:
    """Pads a list of samples into a batch and builds each image's `TrainTarget`."""

    def __init__(self, prompt: TrainingPrompt, size_divisible: int):
        self.prompt = prompt
        self.size_divisible = size_divisible

    def __call__(self, samples: Sequence[TrainSample]) -> TrainBatch:
        images, sizes = batch_images([s.image for s in samples], self.size_divisible)
        targets = [TrainTarget(s.boxes, self.prompt.positive_map(s.labels)) for s in samples]
        return TrainBatch(images, sizes, targets, [s.labels for s in samples], [s.index for s in samples])
