"""ATSS anchors: one square anchor per feature-map location and FPN level.

Conventions follow the official (Detectron-style) generator: boxes are xyxy in resized-image
pixels with the "+1" pixel convention (a box [x1, x2] is x2 - x1 + 1 pixels wide), the cell
anchor of stride s is centred at (s - 1) / 2, and the grid shifts start at 0. Anchors cover the
whole PADDED feature map (row-major: y outer, x inner), not only the unpadded image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def cell_anchor(size: float, stride: int) -> torch.Tensor:
    """The anchor of location (0, 0) for one level.

    Args:
        size: anchor side in pixels (e.g. 64 for P3).
        stride: feature stride in pixels (e.g. 8 for P3).

    Returns:
        float32 Tensor [4] xyxy, e.g. (64, 8) -> [-28, -28, 35, 35].
    """
    # Detectron's generator: a base box [0, 0, stride-1, stride-1] (aspect ratio 1 keeps its
    # width `stride`), scaled by size/stride about its centre, with widths counted as w - 1.
    low, high = _cell_corners(size, stride)
    return torch.tensor([low, low, high, high], dtype=torch.float32)


def _cell_corners(size: float, stride: int) -> tuple[float, float]:
    """(x1 = y1, x2 = y2) of the level's cell anchor, as float32-rounded Python numbers."""
    base_width = float(stride)
    centre = 0.5 * (base_width - 1.0)
    width = base_width * (float(size) / float(stride))
    half = 0.5 * (width - 1.0)
    return _as_float32(centre - half), _as_float32(centre + half)


def _as_float32(value: float) -> float:
    return float(np.float32(value))


def grid_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    sizes: Sequence[float],
    strides: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """Anchors of every level over the padded feature maps.

    Args:
        feature_sizes: (H_l, W_l) of each level's feature map (padded input / stride).
        sizes: anchor size per level (AnchorConfig.sizes).
        strides: stride per level (AnchorConfig.strides).
        device, dtype: of the returned tensors.

    Returns:
        One Tensor [H_l * W_l, 4] xyxy per level; row k = location (k // W_l, k % W_l).
    """
    if not (len(feature_sizes) == len(sizes) == len(strides)):
        raise ValueError(
            f"need one size and stride per level: got {len(feature_sizes)} feature maps, "
            f"{len(sizes)} sizes, {len(strides)} strides"
        )
    anchors = []
    for (height, width), size, stride in zip(feature_sizes, sizes, strides):
        # The cell anchor's corners enter as Python numbers, not a host tensor: no host-to-device
        # copy (a CUDA graph cannot capture one). They are half-integers, exact in any dtype
        # here, so the sums equal `shifts + cell_anchor(...)`.
        low, high = _cell_corners(size, stride)
        shift_x = torch.arange(0, width * stride, step=stride, dtype=dtype, device=device)
        shift_y = torch.arange(0, height * stride, step=stride, dtype=dtype, device=device)
        grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
        grid_x = grid_x.reshape(-1)
        grid_y = grid_y.reshape(-1)
        anchors.append(torch.stack((grid_x + low, grid_y + low, grid_x + high, grid_y + high), dim=1))
    return anchors
