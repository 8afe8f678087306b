"""GLIP/ATSS inference post-processing: token logits -> phrase scores -> detections.

Pipeline (official `ATSSPostProcessor`, docs/parity.md section 1):
  per level and image: candidates = (location, phrase) pairs with phrase_score > threshold;
  keep at most `pre_nms_top_n` of them ranked by phrase_score * sigmoid(centerness);
  score = sqrt(phrase_score * sigmoid(centerness)); decode boxes; clip to the unpadded image.
  per image: concatenate levels; per-label NMS (+1 areas, IoU > thr); cap at `max_detections`
  with a kthvalue threshold (ties may keep more).
Boxes stay in resized-image pixels; `rescale_boxes` maps them to the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from glipcli.config import PostProcessConfig
from glipcli.modeling.box_coder import BoxCoder


@dataclass
class Detections:
    """Detections of one image.

    boxes: [K, 4] xyxy float32 (resized-image pixels unless rescaled);
    scores: [K]; labels: [K] int64, 1-based phrase index.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, index: torch.Tensor) -> "Detections":
        """Subset by an index or boolean mask over the K detections."""
        return Detections(self.boxes[index], self.scores[index], self.labels[index])

    @staticmethod
    def cat(parts: Sequence["Detections"]) -> "Detections":
        """Concatenate detections in order (e.g. FPN levels P3..P7)."""
        return Detections(
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.scores for p in parts]),
            torch.cat([p.labels for p in parts]),
        )


def phrase_scores(token_logits: torch.Tensor, token_spans: Sequence[Sequence[int]]) -> torch.Tensor:
    """Phrase scores as the mean token probability (official SCORE_AGG "MEAN").

    Args:
        token_logits: [B, N, T] dot-product logits (N anchors, T token positions).
        token_spans: for each phrase, the token indices it covers (all < T).

    Returns:
        [B, N, P] scores; a phrase with no tokens scores 0.
    """
    probs = token_logits.sigmoid()
    batch, num_anchors, _ = token_logits.shape
    out = probs.new_zeros((batch, num_anchors, len(token_spans)))
    for p, tokens in enumerate(token_spans):
        if len(tokens) == 0:
            continue
        index = torch.as_tensor(list(tokens), dtype=torch.long, device=token_logits.device)
        out[:, :, p] = probs[:, :, index].mean(-1)
    return out


def _pairwise_iou_plus1(boxes: torch.Tensor) -> torch.Tensor:
    """IoU matrix [K, K] of xyxy boxes [K, 4] with +1 widths, in the CUDA kernel's op order."""
    x1, y1, x2, y2 = boxes.unbind(1)
    left = torch.maximum(x1[:, None], x1[None, :])
    right = torch.minimum(x2[:, None], x2[None, :])
    top = torch.maximum(y1[:, None], y1[None, :])
    bottom = torch.minimum(y2[:, None], y2[None, :])
    width = (right - left + 1).clamp(min=0)
    height = (bottom - top + 1).clamp(min=0)
    inter = width * height
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    return inter / (area[:, None] + area[None, :] - inter)


def _greedy_nms_single_label(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS of one label; returns kept local indices (any order)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    threshold = torch.tensor(iou_threshold, dtype=boxes.dtype, device=boxes.device)
    suppresses = (_pairwise_iou_plus1(boxes[order]) > threshold).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if removed[i]:
            continue
        kept.append(i)
        removed |= suppresses[i]
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


def ml_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Per-label NMS with the official CUDA semantics.

    Each label is processed independently: boxes in descending score order suppress later
    boxes of the same label whose IoU (areas with +1 widths) is strictly > iou_threshold.

    Args:
        boxes: [K, 4] xyxy; scores: [K]; labels: [K] integer labels.

    Returns:
        int64 Tensor of kept indices in ascending original order.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    kept = []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).squeeze(1)
        local = _greedy_nms_single_label(boxes[members], scores[members], iou_threshold)
        kept.append(members[local])
    return torch.sort(torch.cat(kept)).values


def limit_detections(dets: Detections, max_detections: int) -> Detections:
    """Official cap: if more than max_detections, keep scores >= the kthvalue threshold.

    Ties at the threshold can keep more than max_detections boxes (official behaviour).
    """
    count = len(dets)
    if max_detections <= 0 or count <= max_detections:
        return dets
    # The official code takes the threshold from a float32 CPU copy of the scores.
    threshold, _ = torch.kthvalue(dets.scores.detach().cpu().float(), count - max_detections + 1)
    keep = torch.nonzero(dets.scores >= threshold.item()).squeeze(1)
    return dets.select(keep)


def clip_boxes(boxes: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Clip xyxy boxes [K, 4] to x in [0, W-1], y in [0, H-1] (unpadded image size)."""
    height, width = image_hw
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack(
        (
            x1.clamp(min=0, max=width - 1),
            y1.clamp(min=0, max=height - 1),
            x2.clamp(min=0, max=width - 1),
            y2.clamp(min=0, max=height - 1),
        ),
        dim=1,
    )


def rescale_boxes(boxes: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """Map xyxy boxes [K, 4] from an image of size from_hw to to_hw (official BoxList.resize).

    Pure per-axis scaling by new/old (no +-1 adjustment), multiplied in the boxes' dtype.
    """
    ratio_h = float(to_hw[0]) / float(from_hw[0])
    ratio_w = float(to_hw[1]) / float(from_hw[1])
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


class ATSSPostProcessor:
    """Turns head outputs into per-image detections (official ATSSPostProcessor)."""

    def __init__(self, cfg: PostProcessConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else PostProcessConfig()
        self.box_coder = BoxCoder(weights=self.cfg.box_weights)

    def level_candidates(
        self,
        box_regression: torch.Tensor,
        centerness: torch.Tensor,
        phrase_scores: torch.Tensor,
        anchors: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Detections]:
        """Candidates of one FPN level.

        Args:
            box_regression: [B, 4, H, W] deltas; centerness: [B, 1, H, W] logits;
            phrase_scores: [B, H*W, P]; anchors: [H*W, 4] xyxy; image_sizes: B x (h, w).

        Returns:
            Per image, at most pre_nms_top_n Detections (order unspecified).
        """
        batch = box_regression.shape[0]
        deltas = box_regression.permute(0, 2, 3, 1).reshape(batch, -1, 4)
        center_prob = centerness.permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()
        is_candidate = phrase_scores > self.cfg.score_threshold
        ranking = phrase_scores * center_prob[:, :, None]

        results = []
        for b in range(batch):
            candidate_pairs = torch.nonzero(is_candidate[b])  # [M, 2] = (location, phrase)
            values = ranking[b][is_candidate[b]]
            k = min(int(values.shape[0]), self.cfg.pre_nms_top_n)
            values, chosen = values.topk(k, sorted=False)
            location = candidate_pairs[chosen, 0]
            labels = candidate_pairs[chosen, 1] + 1
            boxes = self.box_coder.decode(deltas[b, location], anchors[location])
            boxes = clip_boxes(boxes, image_sizes[b])
            # remove_small_boxes(min_size=0) of the official code is a no-op and is omitted.
            results.append(Detections(boxes, torch.sqrt(values), labels))
        return results

    def candidates(
        self,
        box_regression: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        phrase_scores: Sequence[torch.Tensor],
        anchors: Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Detections]:
        """Pre-NMS candidates of all levels, concatenated P3..P7, per image (inputs as __call__)."""
        per_level = [
            self.level_candidates(reg, ctr, scores, anc, image_sizes)
            for reg, ctr, scores, anc in zip(box_regression, centerness, phrase_scores, anchors, strict=True)
        ]
        return [Detections.cat([level[b] for level in per_level]) for b in range(len(image_sizes))]

    def nms(self, dets: Detections) -> Detections:
        """Per-label NMS at cfg.nms_threshold; keeps the input order."""
        return dets.select(ml_nms(dets.boxes, dets.scores, dets.labels, self.cfg.nms_threshold))

    def __call__(
        self,
        box_regression: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        phrase_scores: Sequence[torch.Tensor],
        anchors: Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Detections]:
        """Final detections per image.

        Args (one entry per FPN level):
            box_regression: [B, 4, H, W]; centerness: [B, 1, H, W] logits;
            phrase_scores: [B, H*W, P]; anchors: [H*W, 4] xyxy over the padded map;
            image_sizes: B x (h, w) of the resized, unpadded images.

        Returns:
            B Detections in resized-image pixels.
        """
        return [
            limit_detections(self.nms(dets), self.cfg.max_detections)
            for dets in self.candidates(box_regression, centerness, phrase_scores, anchors, image_sizes)
        ]
