"""Few-shot training subsets, as the official GLIP protocol draws them.

The official rule (maskrcnn_benchmark `CocoGrounding`, `DATASETS.FEW_SHOT` with
`DATASETS.SHUFFLE_SEED`): take the images that have annotations, in ascending image-id order,
shuffle them with the seed, then walk through them keeping an image when at least one of the
categories it shows still has quota left; every category starts with a quota of K and each kept
image lowers the quota of each category it shows by one (an image-level quota: an image with
five raccoons counts once). Hence every category gets at least K instances (all of its images
if it appears in fewer than K), and different seeds give different subsets.

The official shots -> (epochs, dataset copies) schedule (`--custom_shot_and_epoch_and_general_copy`
1_200_8, 3_200_4, 5_200_2, 10_200_1, and 0_200_1 for all the data) is `default_schedule`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from glipcli.errors import GlipError

OFFICIAL_SCHEDULE = {1: (200, 8), 3: (200, 4), 5: (200, 2), 10: (200, 1), 0: (200, 1)}


def few_shot_indices(labels: Sequence[np.ndarray], shots: int, seed: int) -> list[int]:
    """Indices of the images of a K-shot subset, in ascending order.

    labels[i]: class labels of the boxes of image i (the images in ascending image-id order).
    shots: K >= 1 (0 means all data: every image with a box). Images without boxes are never
    taken (the official training set drops them)."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise GlipError(f"--shots must be a whole number >= 0 (got {shots!r})")
    candidates = [i for i, lab in enumerate(labels) if len(lab) > 0]
    if shots == 0:
        return candidates
    order = list(candidates)
    random.Random(seed).shuffle(order)
    quota: dict[int, int] = {}
    chosen: list[int] = []
    for index in order:
        shown = {int(c) for c in labels[index]}
        if any(quota.get(c, shots) > 0 for c in shown):
            chosen.append(index)
            for c in shown:
                quota[c] = quota.get(c, shots) - 1
    return sorted(chosen)


def default_schedule(shots: int) -> tuple[int, int]:
    """(max epochs, dataset copies per epoch) of the official few-shot protocol for K shots.

    K not in the official table (1, 3, 5, 10, all): the copies of the nearest smaller K."""
    if shots in OFFICIAL_SCHEDULE:
        return OFFICIAL_SCHEDULE[shots]
    below = max(k for k in OFFICIAL_SCHEDULE if k != 0 and k <= shots) if shots > 1 else 1
    return OFFICIAL_SCHEDULE[below]


def default_patience(shots: int) -> tuple[int, int]:
    """(LR-reduction patience, early-stopping patience) in evaluations: the official few-shot
    values (SOLVER.STEP_PATIENCE 3, AUTO_TERMINATE_PATIENCE 8) and, for all data, 2 and 4."""
    return (2, 4) if shots == 0 else (3, 8)
