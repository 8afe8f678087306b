"""Batched per-class NMS as one operator: eager PyTorch, and ONNX `NonMaxSuppression` in exports.

`multiclass_nms` takes boxes [B, K, 4] and per-class scores [B, P, K] (the ONNX operator's
layout) and returns the kept (batch, class, box) index triples [M, 3] int64. The official rule
(areas with +1 widths, suppress IoU > threshold) is the standard IoU of the boxes with their
far corners moved by +1, which is what callers pass here; a score <= `score_threshold` is
never kept. Exported, it becomes ONNX `NonMaxSuppression` with the same arguments.
"""

from __future__ import annotations

import torch

_OP = "glip::multiclass_nms"


@torch.library.custom_op(_OP, mutates_args=())
def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                   score_threshold: float) -> torch.Tensor:
    """boxes: [B, K, 4] xyxy; scores: [B, P, K]. Returns [M, 3] int64 (batch, class, box), per
    batch and class in descending score order (as onnxruntime orders them)."""
    from torchvision.ops import nms

    kept = []
    for b in range(scores.shape[0]):
        for p in range(scores.shape[1]):
            candidates = torch.nonzero(scores[b, p] > score_threshold).squeeze(1)
            if candidates.numel() == 0:
                continue
            local = nms(boxes[b, candidates].float(), scores[b, p, candidates].float(), iou_threshold)
            index = candidates[local]
            kept.append(torch.stack((torch.full_like(index, b), torch.full_like(index, p), index), dim=1))
    if not kept:
        return torch.zeros((0, 3), dtype=torch.long, device=boxes.device)
    return torch.cat(kept)


@multiclass_nms.register_fake
def _(boxes, scores, iou_threshold, score_threshold):
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.long)


def register_torchscript_symbolic(opset: int) -> None:
    """Export `multiclass_nms` as ONNX `NonMaxSuppression` (TorchScript-based exporter, `dynamo=False`)."""
    from torch.onnx import register_custom_op_symbolic

    def symbolic(g, boxes, scores, iou_threshold, score_threshold):
        from torch.onnx.symbolic_helper import _maybe_get_const

        max_per_class = g.op("Constant", value_t=torch.tensor([2**31 - 1], dtype=torch.long))
        iou = g.op("Constant", value_t=torch.tensor([_maybe_get_const(iou_threshold, "f")], dtype=torch.float))
        floor = g.op("Constant", value_t=torch.tensor([_maybe_get_const(score_threshold, "f")], dtype=torch.float))
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou, floor)

    register_custom_op_symbolic(_OP, symbolic, opset)
