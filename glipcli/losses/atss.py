"""ATSS (Adaptive Training Sample Selection) anchor assignment, with GLIP's official semantics.

For every gt box, per FPN level, the `topk` anchors whose centres are nearest (L2) to the gt
centre become candidates. The gt's IoU threshold is mean + std (unbiased) of its candidates'
IoUs; a candidate is positive when its IoU is >= the threshold AND its centre lies inside the gt
by more than `center_margin` pixels (min(l, t, r, b) > 0.01). An anchor positive for several gts
goes to the gt it overlaps most. Every anchor of the PADDED grid takes part (no visibility test).

Numerics follow the official code (docs/parity.md, sections 3 and 4): IoU with the "+1" pixel
convention, evaluated in float32 in the order inter = w * h, inter / (area_a + area_b - inter);
mean/std are column reductions over the [K, G] candidate matrix. The edge-case reference loss
includes three anchors whose float32 IoU equals the threshold bit for bit, so the order matters.

The switches of `ATSSAssigner` default to the official rules; the alternatives exist only to
measure what each rule changes (docs/parity.md, section 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class ATSSAssignment:
    """ATSS result for one image: A anchors (all levels, level-major), G gt boxes,
    K = candidates per gt (topk per level, summed over levels).

    gt_index:            int64 [A] matched gt (0..G-1) per anchor, -1 for negatives.
    ious:                float32 [A, G] IoU of every anchor with every gt.
    candidate_idx:       int64 [K, G] flattened anchor index of each gt's candidates; rows are
                         level-major, nearest first within a level.
    candidate_ious:      float32 [K, G].
    center_margin:       float32 [K, G] min(l, t, r, b) from the candidate's centre to the gt.
    iou_mean, iou_std, iou_thresh: float32 [G] (thresh = mean + std).
    is_candidate_positive: bool [K, G] IoU and centre rules passed, before resolving anchors
                         claimed by several gts.
    """

    gt_index: torch.Tensor
    ious: torch.Tensor
    candidate_idx: torch.Tensor
    candidate_ious: torch.Tensor
    center_margin: torch.Tensor
    iou_mean: torch.Tensor
    iou_std: torch.Tensor
    iou_thresh: torch.Tensor
    is_candidate_positive: torch.Tensor

    @property
    def positive_mask(self) -> torch.Tensor:
        """bool [A]: anchors assigned to some gt."""
        return self.gt_index >= 0

    @property
    def positive_indices(self) -> torch.Tensor:
        """int64 [P]: positive anchor indices, ascending."""
        return torch.nonzero(self.gt_index >= 0).squeeze(1)

    @property
    def num_positive(self) -> int:
        return int((self.gt_index >= 0).sum())


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] xyxy -> [N, 2] centres ((x1 + x2) / 2, (y1 + y2) / 2)."""
    return torch.stack(((boxes[:, 2] + boxes[:, 0]) / 2.0, (boxes[:, 3] + boxes[:, 1]) / 2.0), dim=1)


def pairwise_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor, plus_one: bool = True) -> torch.Tensor:
    """IoU of every box of `boxes_a` [N, 4] with every box of `boxes_b` [M, 4] (xyxy) -> [N, M].

    `plus_one` is the Detectron pixel convention (a box [x1, x2] is x2 - x1 + 1 wide), used by
    ATSS. Evaluated in the official operation order (see the module docstring).
    """
    extra = 1.0 if plus_one else 0.0
    area_a = (boxes_a[:, 2] - boxes_a[:, 0] + extra) * (boxes_a[:, 3] - boxes_a[:, 1] + extra)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0] + extra) * (boxes_b[:, 3] - boxes_b[:, 1] + extra)
    top_left = torch.max(boxes_a[:, None, :2], boxes_b[:, :2])
    bottom_right = torch.min(boxes_a[:, None, 2:], boxes_b[:, 2:])
    wh = (bottom_right - top_left + extra).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area_a[:, None] + area_b - inter)


def resolve_max_iou(ious: torch.Tensor, candidate_idx: torch.Tensor,
                    is_candidate_positive: torch.Tensor) -> torch.Tensor:
    """Give each anchor claimed by one or more gts to the gt with the highest IoU.

    Args:
        ious: [A, G]; candidate_idx: int64 [K, G]; is_candidate_positive: bool [K, G].

    Returns:
        int64 [A] gt index per anchor, -1 where no gt claims it. Exact IoU ties go to the lower
        gt index (`max` returns the first maximum).
    """
    num_anchors, num_gt = ious.shape
    claimed = torch.zeros((num_anchors, num_gt), dtype=torch.bool, device=ious.device)
    gt_columns = torch.arange(num_gt, device=ious.device).expand_as(candidate_idx)
    claimed[candidate_idx[is_candidate_positive], gt_columns[is_candidate_positive]] = True
    claimed_ious = torch.where(claimed, ious, torch.full_like(ious, -float("inf")))
    _, best = claimed_ious.max(dim=1)
    return torch.where(claimed.any(dim=1), best, torch.full_like(best, -1))


@dataclass(frozen=True)
class ATSSAssigner:
    """ATSS with the official rules by default.

    topk: candidates per level and gt (LossConfig.atss_topk; one anchor per location).
    center_margin: a candidate's centre must be inside the gt by MORE than this many pixels.
    iou_plus_one / unbiased_std / inclusive_threshold: the official rules; set False only to
    measure their effect.
    """

    topk: int = 9
    center_margin: float = 0.01
    iou_plus_one: bool = True
    unbiased_std: bool = True
    inclusive_threshold: bool = True

    def __call__(self, anchors_per_level: Sequence[torch.Tensor], gt_boxes: torch.Tensor) -> ATSSAssignment:
        """Assign the anchors of one image.

        Args:
            anchors_per_level: per level [A_l, 4] xyxy anchors (resized-image pixels), over the
                padded feature map, in the head's flattening order.
            gt_boxes: [G, 4] xyxy gt boxes in the same coordinates (G may be 0).

        Returns:
            `ATSSAssignment` over the A = sum(A_l) concatenated anchors. Computed in float32.
        """
        anchors = torch.cat(list(anchors_per_level), dim=0).float()
        gt_boxes = gt_boxes.to(device=anchors.device, dtype=torch.float32)
        num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
        if num_gt == 0:
            return _empty_assignment(num_anchors, self.topk, anchors_per_level, anchors.device)

        ious = pairwise_iou(anchors, gt_boxes, plus_one=self.iou_plus_one)  # [A, G]
        anchor_points = box_centres(anchors)
        gt_points = box_centres(gt_boxes)
        distances = (anchor_points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()  # [A, G]

        candidates = []
        start = 0
        for level_anchors in anchors_per_level:
            end = start + level_anchors.shape[0]
            k = min(self.topk, level_anchors.shape[0])
            _, nearest = distances[start:end].topk(k, dim=0, largest=False)
            candidates.append(nearest + start)
            start = end
        candidate_idx = torch.cat(candidates, dim=0)  # [K, G]

        gt_columns = torch.arange(num_gt, device=anchors.device)
        candidate_ious = ious[candidate_idx, gt_columns]  # [K, G]
        iou_mean = candidate_ious.mean(0)
        iou_std = candidate_ious.std(0, correction=1 if self.unbiased_std else 0)
        iou_thresh = iou_mean + iou_std
        if self.inclusive_threshold:
            passes_iou = candidate_ious >= iou_thresh[None, :]
        else:
            passes_iou = candidate_ious > iou_thresh[None, :]

        cx = anchor_points[:, 0][candidate_idx]  # [K, G]
        cy = anchor_points[:, 1][candidate_idx]
        left = cx - gt_boxes[:, 0]
        top = cy - gt_boxes[:, 1]
        right = gt_boxes[:, 2] - cx
        bottom = gt_boxes[:, 3] - cy
        margin = torch.stack([left, top, right, bottom], dim=1).min(dim=1)[0]  # [K, G]
        is_candidate_positive = passes_iou & (margin > self.center_margin)

        gt_index = resolve_max_iou(ious, candidate_idx, is_candidate_positive)
        return ATSSAssignment(
            gt_index=gt_index, ious=ious, candidate_idx=candidate_idx, candidate_ious=candidate_ious,
            center_margin=margin, iou_mean=iou_mean, iou_std=iou_std, iou_thresh=iou_thresh,
            is_candidate_positive=is_candidate_positive,
        )


def _empty_assignment(num_anchors: int, topk: int, anchors_per_level: Sequence[torch.Tensor],
                      device: torch.device) -> ATSSAssignment:
    """All anchors negative (an image without gt boxes)."""
    k = sum(min(topk, level.shape[0]) for level in anchors_per_level)
    empty_kg = torch.zeros((k, 0), dtype=torch.float32, device=device)
    empty_g = torch.zeros((0,), dtype=torch.float32, device=device)
    return ATSSAssignment(
        gt_index=torch.full((num_anchors,), -1, dtype=torch.int64, device=device),
        ious=torch.zeros((num_anchors, 0), dtype=torch.float32, device=device),
        candidate_idx=torch.zeros((k, 0), dtype=torch.int64, device=device),
        candidate_ious=empty_kg, center_margin=empty_kg.clone(),
        iou_mean=empty_g, iou_std=empty_g.clone(), iou_thresh=empty_g.clone(),
        is_candidate_positive=torch.zeros((k, 0), dtype=torch.bool, device=device),
    )
