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

import functools
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

    One gather for all phrases (a few kernels whatever P is, rather than a few per phrase):
    each phrase's tokens padded to the longest span, the padding weighted by 0.
    """
    batch, num_anchors, _ = token_logits.shape
    spans = tuple(tuple(int(t) for t in tokens) for tokens in token_spans)
    width = max((len(tokens) for tokens in spans), default=0)
    if width == 0:
        return token_logits.new_zeros((batch, num_anchors, len(spans)))
    index, valid, count = _span_tensors(spans, token_logits.device, token_logits.dtype)
    probs = token_logits.sigmoid()[:, :, index.view(-1)].view(batch, num_anchors, len(spans), width)
    return (probs * valid).sum(-1) / count


@functools.lru_cache(maxsize=64)
def _span_tensors(spans: tuple[tuple[int, ...], ...], device: torch.device, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token index [P, W], weights [P, W], token count [P]) of phrase spans, made once per
    prompt and device: each is a host-to-device copy, which on a GPU waits for the queued work."""
    lengths = [len(tokens) for tokens in spans]
    width = max(lengths)
    with torch.inference_mode(False):  # normal tensors: usable where autograd records too
        index = torch.tensor([list(tokens) + [0] * (width - len(tokens)) for tokens in spans],
                             dtype=torch.long, device=device)
        valid = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths], dtype=dtype, device=device)
        count = torch.tensor([max(n, 1) for n in lengths], dtype=dtype, device=device)
    return index, valid, count


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

    def _level_top(self, box_regression: torch.Tensor, centerness: torch.Tensor, phrase_scores: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pre-NMS top of one level for every image at once, before any data-dependent
        selection: non-candidates rank -1, below every candidate (whose ranking is >= 0), so
        the top min(pre_nms_top_n, N*P) holds the same candidates as a top-k over candidates
        alone. Returns (ranking values, locations, 0-based phrases, is-candidate), each [B, k]."""
        batch = box_regression.shape[0]
        num_phrases = phrase_scores.shape[2]
        center_prob = centerness.permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()
        is_candidate = phrase_scores > self.cfg.score_threshold
        ranking = (phrase_scores * center_prob[:, :, None]).masked_fill(~is_candidate, -1.0).view(batch, -1)
        k = min(self.cfg.pre_nms_top_n, ranking.shape[1])
        values, chosen = ranking.topk(k, dim=1, sorted=False)
        return values, chosen // num_phrases, chosen % num_phrases, is_candidate.view(batch, -1).gather(1, chosen)

    def _decode(self, deltas: torch.Tensor, anchors: torch.Tensor, location: torch.Tensor,
                image_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """deltas [B, N, 4], anchors [N, 4], location [B, k] -> boxes [B, k, 4] clipped per image."""
        batch, k = location.shape
        picked = deltas.gather(1, location[:, :, None].expand(batch, k, 4))
        boxes = self.box_coder.decode(picked.reshape(-1, 4), anchors[location.reshape(-1)]).view(batch, k, 4)
        # x in [0, W-1], y in [0, H-1] of each unpadded image (clip_boxes, for the whole batch)
        limits = torch.tensor([[w - 1, h - 1, w - 1, h - 1] for h, w in image_sizes], dtype=boxes.dtype,
                              device=boxes.device)[:, None, :]
        return torch.minimum(boxes.clamp(min=0), limits)

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
        return self.candidates([box_regression], [centerness], [phrase_scores], [anchors], image_sizes)

    def candidates(
        self,
        box_regression: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        phrase_scores: Sequence[torch.Tensor],
        anchors: Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Detections]:
        """Pre-NMS candidates of all levels, concatenated P3..P7, per image (inputs as __call__).

        Candidates (location, phrase) have phrase_score > score_threshold; each level keeps its
        pre_nms_top_n best by phrase_score * sigmoid(centerness); score = sqrt of that; boxes
        decoded and clipped to the unpadded image. Every image and level is handled by the same
        few batched operations; only the final per-image selection depends on the data.
        (remove_small_boxes(min_size=0) of the official code is a no-op and is omitted.)"""
        batch = len(image_sizes)
        tops, offset = [], 0
        for reg, ctr, scores, anc in zip(box_regression, centerness, phrase_scores, anchors, strict=True):
            values, location, phrase, keep = self._level_top(reg, ctr, scores)
            tops.append((values, location + offset, phrase, keep))
            offset += anc.shape[0]
        values, location, phrase, keep = (torch.cat(parts, dim=1) for parts in zip(*tops))
        deltas = torch.cat([reg.permute(0, 2, 3, 1).reshape(batch, -1, 4) for reg in box_regression], dim=1)
        boxes = self._decode(deltas, torch.cat(list(anchors)), location, image_sizes)
        scores = values.clamp(min=0).sqrt()
        labels = phrase + 1
        return [Detections(boxes[b][keep[b]], scores[b][keep[b]], labels[b][keep[b]]) for b in range(batch)]

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
