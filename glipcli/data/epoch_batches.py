"""Which images each training step sees: a seeded, resumable, multi-process batch plan.

An epoch is `copies` passes over the training images (the official `DATASETS.GENERAL_COPY`,
a duplicated dataset) in one random order drawn from (seed, epoch). The order is cut into global
batches of `batch_size * num_replicas` items; process `rank` takes its `batch_size` slice of each.
With several processes a short last batch is filled up from the start of the order so that all
processes take the same number of equal steps; a single process keeps it short.

Because the plan is a pure function of (seed, epoch), resuming at step k of an epoch is just
skipping the first k batches.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from glipcli.errors import GlipError


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"glip-epoch/{seed}/{epoch}".encode()).hexdigest()
    return int(digest[:15], 16)


@dataclass(frozen=True)
class EpochBatches:
    indices: tuple[int, ...]  # record indices of the training images
    copies: int
    batch_size: int  # per process
    seed: int
    num_replicas: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        if not self.indices:
            raise GlipError("no training images (every image lacks boxes, or the few-shot subset is empty)")
        if self.copies < 1:
            raise GlipError(f"dataset copies must be at least 1 (got {self.copies})")
        if self.batch_size < 1:
            raise GlipError(f"--batch-size must be at least 1 (got {self.batch_size})")

    @classmethod
    def of(cls, indices: Sequence[int], copies: int, batch_size: int, seed: int,
           num_replicas: int = 1, rank: int = 0) -> "EpochBatches":
        return cls(tuple(int(i) for i in indices), int(copies), int(batch_size), int(seed),
                   int(num_replicas), int(rank))

    @property
    def items_per_epoch(self) -> int:
        return len(self.indices) * self.copies

    def __len__(self) -> int:
        """Steps per epoch (the same on every process)."""
        return math.ceil(self.items_per_epoch / (self.batch_size * self.num_replicas))

    def order(self, epoch: int) -> list[int]:
        """Positions 0..items_per_epoch-1 in this epoch's order (position p is image
        `indices[p % len(indices)]`)."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        return torch.randperm(self.items_per_epoch, generator=generator).tolist()

    def batches(self, epoch: int, start: int = 0) -> list[list[tuple[int, int, int]]]:
        """This process's batches of `epoch` from step `start` on; each item is
        (epoch, position, record index), the key of `TrainDataset`."""
        order = self.order(epoch)
        global_size = self.batch_size * self.num_replicas
        if self.num_replicas > 1 and len(order) % global_size:
            fill = global_size - len(order) % global_size
            order = order + (order * (fill // len(order) + 1))[:fill]
        n = len(self.indices)
        out = []
        for step in range(start, len(self)):
            chunk = order[step * global_size:(step + 1) * global_size]
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            out.append([(epoch, p, self.indices[p % n]) for p in mine])
        return out
