"""Per-anchor training targets derived from an ATSS assignment: token targets, box-coder
regression targets and centerness targets (official GLIP semantics)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glipcli.modeling.box_coder import BoxCoder


@dataclass
class TrainTarget:
    """Ground truth of one training image.

    boxes:        [G, 4] xyxy in RESIZED-image pixels (the coordinates of the anchors), G >= 0.
    positive_map: [G, L] binary float; row g marks the caption tokens of box g's phrase. An
                  all-zero row is allowed (the official code keeps a box whose phrase span could
                  not be located; its anchors are positive with no positive token).
    """

    boxes: torch.Tensor
    positive_map: torch.Tensor

    def __post_init__(self) -> None:
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [G, 4], got {tuple(self.boxes.shape)}")
        if self.positive_map.dim() != 2 or self.positive_map.shape[0] != self.boxes.shape[0]:
            raise ValueError(
                f"positive_map must be [G, L] with G = {self.boxes.shape[0]} rows (one per box), "
                f"got {tuple(self.positive_map.shape)}")


def token_targets(gt_index: torch.Tensor, positive_map: torch.Tensor, num_tokens: int,
                  max_query_len: int) -> torch.Tensor:
    """Binary token targets of every anchor of one image.

    Positives take their gt's positive_map row. Negatives take the official "no object" one-hot
    on the LAST position of the max_query_len-wide token axis (index max_query_len - 1 = 255).
    That position only exists here when the token axis is full width (num_tokens ==
    max_query_len). When the caller trims the text to its real tokens (num_tokens < 256), the
    position is absent and negatives get all-zero rows: the loss is unchanged, because the
    official code pads every caption to 256 tokens and a caption shorter than 256 tokens has
    position 255 masked out of the loss by the text mask. (Giving the one-hot to the last
    trimmed position instead would wrongly make [SEP] a target of every negative anchor.)

    Args:
        gt_index: int64 [A] matched gt per anchor, -1 for negatives.
        positive_map: [G, Lp] binary; columns >= num_tokens must be all zero (they cannot be
            represented on the token axis), missing columns count as zero.
        num_tokens: L, the width of the logits' token axis (<= max_query_len).
        max_query_len: the text length the official model pads to (LanguageConfig.max_query_len).

    Returns:
        float32 [A, L].
    """
    if num_tokens > max_query_len:
        raise ValueError(f"token axis of {num_tokens} positions exceeds max_query_len={max_query_len}")
    pmap = _fit_width(positive_map.to(device=gt_index.device, dtype=torch.float32), num_tokens)
    positive = gt_index >= 0
    targets = torch.zeros((gt_index.shape[0], num_tokens), dtype=torch.float32, device=gt_index.device)
    targets[positive] = pmap[gt_index[positive]]
    if num_tokens == max_query_len:
        targets[~positive, max_query_len - 1] = 1.0
    return targets


def _fit_width(positive_map: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[G, Lp] -> [G, num_tokens]: drop all-zero extra columns, zero-pad missing ones."""
    width = positive_map.shape[1]
    if width > num_tokens:
        if positive_map[:, num_tokens:].any():
            raise ValueError(
                f"positive_map marks tokens at positions >= {num_tokens}, beyond the logits' token axis")
        return positive_map[:, :num_tokens]
    if width < num_tokens:
        return torch.nn.functional.pad(positive_map, (0, num_tokens - width))
    return positive_map


def regression_targets(gt_boxes: torch.Tensor, anchors: torch.Tensor, box_coder: BoxCoder) -> torch.Tensor:
    """Box-coder deltas of matched gt boxes [P, 4] w.r.t. their anchors [P, 4] -> [P, 4]."""
    return box_coder.encode(gt_boxes, anchors)


def centerness_targets(reg_targets: torch.Tensor, anchors: torch.Tensor, box_coder: BoxCoder) -> torch.Tensor:
    """Centerness of each positive anchor's centre inside its gt box.

    As the official code, the gt box is recovered by decoding the regression targets, then
    sqrt((min(l, r) / max(l, r)) * (min(t, b) / max(t, b))) with l, t, r, b measured from the
    anchor centre ((x1 + x2) / 2, (y1 + y2) / 2); the two ratios are formed first (bitwise with
    the golden data).

    Args:
        reg_targets: [P, 4] deltas; anchors: [P, 4] xyxy.

    Returns:
        [P] in (0, 1] (ATSS positives have their centre strictly inside the gt).
    """
    gts = box_coder.decode(reg_targets, anchors)
    cx = (anchors[:, 2] + anchors[:, 0]) / 2
    cy = (anchors[:, 3] + anchors[:, 1]) / 2
    left_right = torch.stack([cx - gts[:, 0], gts[:, 2] - cx], dim=1)
    top_bottom = torch.stack([cy - gts[:, 1], gts[:, 3] - cy], dim=1)
    ratio_x = left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0]
    ratio_y = top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0]
    return torch.sqrt(ratio_x * ratio_y)
