"""ATSS post-processing written with fixed-size tensors, so that it exports into the ONNX graph.

The same rules as `glipcli.modeling.postprocess.ATSSPostProcessor` (official ATSS): per level,
(location, phrase) candidates scoring over `score_threshold`, at most `pre_nms_top_n` of them
ranked by phrase score x sigmoid(centerness), score sqrt(rank), boxes decoded and clipped to
the unpadded image; per image, per-phrase NMS (+1 areas, IoU > threshold) and the kthvalue cap
of `max_detections`. Instead of variable-length selections, non-candidates carry the score -1
through a fixed-size top-k, and the only data-dependent size is the NMS output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from glipcli.config import PostProcessConfig
from glipcli.export.nms import multiclass_nms
from glipcli.modeling.box_coder import BoxCoder

_NOT_CANDIDATE = -1.0


def phrase_probabilities(token_logits: torch.Tensor, token_spans: Sequence[Sequence[int]]) -> torch.Tensor:
    """[B, N, T] token logits -> [B, N, P] mean token probability of each phrase (0 if it has no token)."""
    probs = token_logits.sigmoid()
    columns = []
    for tokens in token_spans:
        if len(tokens) == 0:
            columns.append(torch.zeros_like(probs[:, :, 0]))
        else:
            columns.append(probs[:, :, list(tokens)].mean(-1))
    return torch.stack(columns, dim=-1)


class GraphPostProcessor(torch.nn.Module):
    """Head outputs -> detections of a batch, flattened: (boxes [M, 4], scores [M], phrase [M]
    0-based, batch index [M]); boxes in resized-image pixels, unsorted."""

    def __init__(self, cfg: PostProcessConfig, token_spans: Sequence[Sequence[int]]):
        super().__init__()
        self.cfg = cfg
        self.token_spans = [list(t) for t in token_spans]
        self.box_coder = BoxCoder(weights=cfg.box_weights)

    def level_candidates(self, box_regression: torch.Tensor, centerness: torch.Tensor,
                         token_logits: torch.Tensor, anchors: torch.Tensor, image_sizes: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One level: box_regression [B, 4, H, W], centerness [B, 1, H, W], token_logits
        [B, H*W, T], anchors [H*W, 4], image_sizes [B, 2] (h, w) int64.
        Returns boxes [B, k, 4], scores [B, k] (-1: no candidate), phrase [B, k]; k = pre_nms_top_n."""
        batch = box_regression.shape[0]
        phrases = len(self.token_spans)
        top_n = self.cfg.pre_nms_top_n
        deltas = box_regression.permute(0, 2, 3, 1).reshape(batch, -1, 4)
        center = centerness.permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()
        scores = phrase_probabilities(token_logits, self.token_spans)  # [B, N, P]
        ranking = torch.where(scores > self.cfg.score_threshold, scores * center[:, :, None],
                              torch.full_like(scores, _NOT_CANDIDATE)).reshape(batch, -1)
        # Padding to at least top_n entries keeps k fixed whatever the image size.
        padding = torch.full((batch, top_n), _NOT_CANDIDATE, dtype=ranking.dtype, device=ranking.device)
        values, flat = torch.cat((ranking, padding), dim=1).topk(top_n, dim=1)
        flat = flat.clamp(max=ranking.shape[1] - 1)  # padding picks (score -1) point at a real entry
        location, phrase = flat // phrases, flat % phrases
        chosen_deltas = torch.gather(deltas, 1, location[:, :, None].expand(-1, -1, 4))
        boxes = self.box_coder.decode(chosen_deltas.reshape(-1, 4), anchors[location.reshape(-1)])
        boxes = clip_to_images(boxes.reshape(batch, top_n, 4), image_sizes)
        valid = values > _NOT_CANDIDATE / 2
        scores = torch.where(valid, torch.sqrt(values.clamp(min=0)), torch.full_like(values, _NOT_CANDIDATE))
        return boxes, scores, phrase

    def forward(self, box_regression: list[torch.Tensor], centerness: list[torch.Tensor],
                token_logits: list[torch.Tensor], anchors: list[torch.Tensor], image_sizes: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = [self.level_candidates(r, c, t, a, image_sizes)
                  for r, c, t, a in zip(box_regression, centerness, token_logits, anchors, strict=True)]
        boxes = torch.cat([level[0] for level in levels], dim=1)  # [B, K, 4]
        scores = torch.cat([level[1] for level in levels], dim=1)  # [B, K]
        phrase = torch.cat([level[2] for level in levels], dim=1)  # [B, K]
        classes = torch.arange(len(self.token_spans), device=phrase.device)
        per_class = torch.where(phrase[:, None, :] == classes[None, :, None], scores[:, None, :],
                                torch.full_like(scores[:, None, :], _NOT_CANDIDATE))  # [B, P, K]
        # The official NMS measures areas with +1 widths: the standard IoU of boxes one pixel larger.
        grown = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)
        selected = multiclass_nms(grown, per_class, self.cfg.nms_threshold, _NOT_CANDIDATE / 2)
        image, box = selected[:, 0], selected[:, 2]
        kept_scores = scores[image, box]
        # Official cap: with more than max_detections, keep the scores >= the max_detections-th best.
        board = torch.full_like(scores, _NOT_CANDIDATE).index_put((image, box), kept_scores)
        cap = min(self.cfg.max_detections, board.shape[1])
        floor = board.topk(cap, dim=1).values[:, -1]
        keep = kept_scores >= floor[image]
        return boxes[image, box][keep], kept_scores[keep], phrase[image, box][keep], image[keep]


def clip_to_images(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """boxes [B, K, 4] xyxy clipped to x in [0, w-1], y in [0, h-1]; image_sizes [B, 2] (h, w)."""
    high = (image_sizes.flip(1).to(boxes.dtype) - 1).repeat(1, 2)[:, None, :]  # [B, 1, 4] (w-1, h-1, w-1, h-1)
    return torch.minimum(boxes.clamp(min=0), high)


def rescale_to_originals(boxes: torch.Tensor, image_index: torch.Tensor, image_sizes: torch.Tensor,
                         original_sizes: torch.Tensor) -> torch.Tensor:
    """boxes [M, 4] of images `image_index` [M] from resized (h, w) to original (h, w) pixels."""
    ratio = original_sizes.to(torch.float32) / image_sizes.to(torch.float32)  # [B, 2] (h, w)
    per_box = ratio.flip(1).repeat(1, 2)[image_index]  # [M, 4] (rw, rh, rw, rh)
    return boxes * per_box
