"""GLIP's training loss (official `ATSSLossComputation` with the GLIP-T settings).

    loss_dot_product_token = token focal loss over anchors x unmasked tokens / max(num_pos, 1)
    loss_reg               = sum(GIoU loss * centerness target) / sum(centerness targets) * 2.0
    loss_centerness        = BCE-with-logits(centerness logit, centerness target).sum() / max(num_pos, 1)

Sums and normalisers are batch totals (positives of all images). In multi-process training the
official code averages the normalisers over processes; pass `reduce_mean` for that.
The official `loss_cls` is 0 x (focal loss on the unused `cls_logits`) and is not produced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glipcli.config import GLIPConfig
from glipcli.losses.atss import ATSSAssigner, ATSSAssignment
from glipcli.losses.focal import token_sigmoid_focal_loss
from glipcli.losses.giou import giou_loss
from glipcli.losses.targets import TrainTarget, centerness_targets, regression_targets, token_targets
from glipcli.modeling.box_coder import BoxCoder
from glipcli.modeling.glip import GLIPOutputs

LOSS_KEYS = ("loss_reg", "loss_centerness", "loss_dot_product_token")


@dataclass
class DensePredictions:
    """Head outputs flattened over FPN levels: A = sum_l H_l * W_l anchors, level-major, then
    row-major within a level (the official flattening).

    token_logits:      [B, A, L] region-token alignment logits.
    box_regression:    [B, A, 4] box-coder deltas.
    centerness:        [B, A] centerness logits.
    anchors:           [A, 4] xyxy resized-image pixels (shared by the batch).
    anchors_per_level: A_l per level (sums to A).
    """

    token_logits: torch.Tensor
    box_regression: torch.Tensor
    centerness: torch.Tensor
    anchors: torch.Tensor
    anchors_per_level: tuple[int, ...]

    @classmethod
    def from_outputs(cls, outputs: GLIPOutputs) -> "DensePredictions":
        """Flatten `GLIP.forward` outputs (per level [B, 4, H, W] / [B, 1, H, W] / [B, HW, L])."""
        head = outputs.head
        batch = head.box_regression[0].shape[0]
        return cls(
            token_logits=torch.cat(list(head.token_logits), dim=1),
            box_regression=torch.cat(
                [r.permute(0, 2, 3, 1).reshape(batch, -1, 4) for r in head.box_regression], dim=1),
            centerness=torch.cat([c.permute(0, 2, 3, 1).reshape(batch, -1) for c in head.centerness], dim=1),
            anchors=torch.cat(list(outputs.anchors), dim=0),
            anchors_per_level=tuple(int(a.shape[0]) for a in outputs.anchors),
        )

    def anchors_by_level(self) -> list[torch.Tensor]:
        """Per level [A_l, 4]."""
        return list(torch.split(self.anchors, list(self.anchors_per_level), dim=0))


@dataclass
class LossOutput:
    """Losses plus the targets that produced them (P = positives of the whole batch, in image
    order then ascending anchor index).

    losses:              LOSS_KEYS -> scalar tensors.
    assignments:         per image ATSS result.
    positive_indices:    per image int64 [P_i] anchor indices.
    token_targets:       float32 [B, A, L].
    regression_targets:  float32 [P, 4] box-coder deltas.
    centerness_targets:  float32 [P].
    num_pos:             P (this process).
    """

    losses: dict[str, torch.Tensor]
    assignments: list[ATSSAssignment]
    positive_indices: list[torch.Tensor]
    token_targets: torch.Tensor
    regression_targets: torch.Tensor
    centerness_targets: torch.Tensor
    num_pos: int


class GLIPLoss:
    """Official GLIP training loss.

    Args:
        cfg: model config (uses `loss`, `language.max_query_len`, `postprocess.box_weights`).
        reduce_mean: averages a scalar tensor over training processes (e.g.
            `lambda t: accelerator.reduce(t, "mean")`); None for a single process. Used for the
            num_pos and centerness-sum normalisers, as the official code does.
    """

    def __init__(self, cfg: GLIPConfig, reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.cfg = cfg.loss
        self.max_query_len = cfg.language.max_query_len
        self.box_coder = BoxCoder(cfg.postprocess.box_weights)
        self.assigner = ATSSAssigner(topk=cfg.loss.atss_topk)
        self.reduce_mean = reduce_mean

    def __call__(self, outputs: GLIPOutputs | DensePredictions, targets: Sequence[TrainTarget],
                 text_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms of a batch.

        Args:
            outputs: `GLIP.forward` output (or already flattened `DensePredictions`), batch B.
            targets: B `TrainTarget`s (boxes in the resized-image pixels of the anchors).
            text_mask: [B, L] attention mask of the text the logits were computed with
                (L = the token axis of the logits, 256 when padded as the official code does).

        Returns:
            {"loss_reg", "loss_centerness", "loss_dot_product_token"} -> scalar float32 tensors.
        """
        return self.compute(outputs, targets, text_mask).losses

    def assign(self, anchors_per_level: Sequence[torch.Tensor],
               targets: Sequence[TrainTarget]) -> list[ATSSAssignment]:
        """ATSS assignment of each image (anchors per level [A_l, 4], shared by the batch)."""
        return [self.assigner(anchors_per_level, t.boxes) for t in targets]

    def compute(self, outputs: GLIPOutputs | DensePredictions, targets: Sequence[TrainTarget],
                text_mask: torch.Tensor) -> LossOutput:
        """`__call__` with the assignment and targets kept (for tests and inspection)."""
        if isinstance(outputs, DensePredictions):
            preds = outputs
        else:
            preds = DensePredictions.from_outputs(outputs)
        batch, num_anchors, num_tokens = preds.token_logits.shape
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch} images")
        if text_mask.shape != (batch, num_tokens):
            raise ValueError(f"text_mask must be [B, L] = {(batch, num_tokens)}, got {tuple(text_mask.shape)}")
        device = preds.token_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            return self._compute(preds, targets, text_mask.to(device), num_anchors, num_tokens)

    def _compute(self, preds: DensePredictions, targets: Sequence[TrainTarget], text_mask: torch.Tensor,
                 num_anchors: int, num_tokens: int) -> LossOutput:
        anchors = preds.anchors.float()
        assignments = self.assign(preds.anchors_by_level(), targets)

        positive_indices, matched_boxes, token_rows = [], [], []
        for assignment, target in zip(assignments, targets):
            pos = assignment.positive_indices
            positive_indices.append(pos)
            boxes = target.boxes.to(device=anchors.device, dtype=torch.float32)
            matched_boxes.append(boxes[assignment.gt_index[pos]])
            token_rows.append(token_targets(assignment.gt_index, target.positive_map, num_tokens,
                                            self.max_query_len))
        tokens = torch.stack(token_rows, dim=0)  # [B, A, L]

        flat_pos = torch.cat([pos + i * num_anchors for i, pos in enumerate(positive_indices)])
        pos_anchors = anchors.repeat(len(targets), 1)[flat_pos]
        reg_targets = regression_targets(torch.cat(matched_boxes, dim=0), pos_anchors, self.box_coder)
        num_pos = int(flat_pos.numel())
        num_pos_avg = max(self._average(float(num_pos), anchors.device), 1.0)

        token_loss = token_sigmoid_focal_loss(
            preds.token_logits.float(), tokens, text_mask, self.cfg.focal_alpha, self.cfg.focal_gamma)
        losses = {"loss_dot_product_token": token_loss / num_pos_avg}

        box_regression = preds.box_regression.float().reshape(-1, 4)[flat_pos]
        centerness = preds.centerness.float().reshape(-1)[flat_pos]
        if num_pos > 0:
            ctr_targets = centerness_targets(reg_targets, pos_anchors, self.box_coder)
            ctr_sum_avg = self._average(float(ctr_targets.sum()), anchors.device)
            pred_boxes = self.box_coder.decode(box_regression, pos_anchors)
            target_boxes = self.box_coder.decode(reg_targets, pos_anchors)
            reg_loss = (giou_loss(pred_boxes, target_boxes) * ctr_targets).sum() / ctr_sum_avg
            losses["loss_reg"] = reg_loss * self.cfg.reg_loss_weight
            losses["loss_centerness"] = F.binary_cross_entropy_with_logits(
                centerness, ctr_targets, reduction="sum") / num_pos_avg
        else:
            ctr_targets = centerness.new_zeros((0,))
            if self.reduce_mean is not None:  # keep the collective calls in step across processes
                self._average(0.0, anchors.device)
            # Sums over empty selections: zero, but still connected to the graph.
            losses["loss_reg"] = box_regression.sum()
            losses["loss_centerness"] = centerness.sum()

        return LossOutput(
            losses={k: losses[k] for k in LOSS_KEYS}, assignments=assignments,
            positive_indices=positive_indices, token_targets=tokens, regression_targets=reg_targets,
            centerness_targets=ctr_targets, num_pos=num_pos)

    def _average(self, value: float, device: torch.device) -> float:
        """Mean of a host scalar over processes (identity without `reduce_mean`)."""
        if self.reduce_mean is None:
            return value
        return float(self.reduce_mean(torch.tensor([value], dtype=torch.float64, device=device)).item())
