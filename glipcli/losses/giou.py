"""Generalised IoU loss as GLIP's ATSS head computes it (areas WITHOUT the +1 convention)."""

from __future__ import annotations

import torch

EPS = 1e-7


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """Per-box 1 - GIoU.

    Official details: the predicted box's x2/y2 are raised to at least x1/y1; areas are
    (x2 - x1) * (y2 - y1) (no +1); the intersection is 0 unless it has positive width AND
    height; 1e-7 is added to both the union and the enclosing area.

    Args:
        pred_boxes: [P, 4] xyxy (decoded predictions); target_boxes: [P, 4] xyxy.

    Returns:
        [P] losses in [0, 2).
    """
    px1, py1, px2, py2 = pred_boxes.unbind(dim=1)
    px2 = torch.max(px1, px2)
    py2 = torch.max(py1, py2)
    pred_area = (px2 - px1) * (py2 - py1)

    tx1, ty1, tx2, ty2 = target_boxes.unbind(dim=1)
    target_area = (tx2 - tx1) * (ty2 - ty1)

    ix1 = torch.max(px1, tx1)
    iy1 = torch.max(py1, ty1)
    ix2 = torch.min(px2, tx2)
    iy2 = torch.min(py2, ty2)
    overlaps = (iy2 > iy1) & (ix2 > ix1)
    inter = torch.where(overlaps, (ix2 - ix1) * (iy2 - iy1), torch.zeros_like(pred_area))

    ex1 = torch.min(px1, tx1)
    ey1 = torch.min(py1, ty1)
    ex2 = torch.max(px2, tx2)
    ey2 = torch.max(py2, ty2)
    enclosing = (ex2 - ex1) * (ey2 - ey1) + EPS

    union = pred_area + target_area - inter + EPS
    ious = inter / union
    gious = ious - (enclosing - union) / enclosing
    return 1 - gious
