"""Dealing the labelled images into dataset splits (`--split train=0.8,valid=0.2 --seed 0`).

Images are shuffled with the seed and cut in proportion (largest remainders get the leftover
images), so a split's images depend only on the image list, the fractions and the seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from glipcli.errors import GlipError

SPLIT_NAMES = ("train", "valid", "test")
DEFAULT_SPLIT = "train=0.8,valid=0.2"


def parse_splits(text: str) -> dict[str, float]:
    """`"train=0.8,valid=0.2"` -> {"train": 0.8, "valid": 0.2}; fractions in (0, 1] summing to 1,
    names from train/valid/test (the folders `glip finetune --data` reads), train included."""
    fractions: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise GlipError(f"--split {text!r}: {part!r} is not NAME=FRACTION (e.g. train=0.8,valid=0.2)")
        if name not in SPLIT_NAMES:
            raise GlipError(f"--split {text!r}: unknown split {name!r} (choose from {', '.join(SPLIT_NAMES)})")
        if name in fractions:
            raise GlipError(f"--split {text!r}: {name} is given twice")
        try:
            fraction = float(value)
        except ValueError:
            raise GlipError(f"--split {text!r}: {value.strip()!r} is not a number") from None
        if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
            raise GlipError(f"--split {text!r}: the fraction of {name} must be in (0, 1]")
        fractions[name] = fraction
    if "train" not in fractions:
        raise GlipError(f"--split {text!r}: needs a train split")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise GlipError(f"--split {text!r}: the fractions sum to {total:g}, not 1")
    return {name: fractions[name] for name in SPLIT_NAMES if name in fractions}


def split_sizes(count: int, fractions: dict[str, float]) -> dict[str, int]:
    """How many of `count` images each split gets (largest remainder; ties in split order)."""
    exact = {name: count * f for name, f in fractions.items()}
    sizes = {name: math.floor(v) for name, v in exact.items()}
    leftover = count - sum(sizes.values())
    by_remainder = sorted(fractions, key=lambda n: -(exact[n] - sizes[n]))
    for name in by_remainder[:leftover]:
        sizes[name] += 1
    return sizes


def assign_splits(count: int, fractions: dict[str, float], seed: int) -> list[str]:
    """The split of each of `count` images (by position)."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    assigned = [""] * count
    start = 0
    for name, size in split_sizes(count, fractions).items():
        for position in order[start:start + size]:
            assigned[position] = name
        start += size
    return assigned


def split_members(assigned: Sequence[str], name: str) -> list[int]:
    return [i for i, split in enumerate(assigned) if split == name]
