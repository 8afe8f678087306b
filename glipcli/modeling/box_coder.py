"""ATSS box coder: boxes <-> regression deltas relative to anchors.

Official semantics ("BOX" regression type): widths/heights use the +1 convention
(w = x2 - x1 + 1), centres are (x1 + x2) / 2, deltas are weighted by (10, 10, 5, 5), and the
decoded log-size deltas are clamped at log(1000 / 16). Decoding returns
x1 = cx - 0.5 * (w - 1), x2 = cx + 0.5 * (w - 1), so decode(encode(b, a), a) == b.
"""

from __future__ import annotations

import math

import torch


class BoxCoder:
    """Encode/decode xyxy boxes against xyxy anchors (both [N, 4], same dtype)."""

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        clip: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.clip = float(clip)

    @staticmethod
    def _sizes_and_centres(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        widths = boxes[:, 2] - boxes[:, 0] + 1
        heights = boxes[:, 3] - boxes[:, 1] + 1
        ctr_x = (boxes[:, 2] + boxes[:, 0]) / 2
        ctr_y = (boxes[:, 3] + boxes[:, 1]) / 2
        return widths, heights, ctr_x, ctr_y

    def encode(self, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Regression targets.

        Args:
            gt_boxes: [N, 4] xyxy target boxes.
            anchors: [N, 4] xyxy anchors (row i pairs with gt row i).

        Returns:
            [N, 4] deltas (dx, dy, dw, dh).
        """
        wx, wy, ww, wh = self.weights
        aw, ah, acx, acy = self._sizes_and_centres(anchors)
        gw, gh, gcx, gcy = self._sizes_and_centres(gt_boxes)
        dx = wx * (gcx - acx) / aw
        dy = wy * (gcy - acy) / ah
        dw = ww * torch.log(gw / aw)
        dh = wh * torch.log(gh / ah)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes from regression outputs.

        Args:
            deltas: [N, 4] (dx, dy, dw, dh).
            anchors: [N, 4] xyxy anchors, cast to deltas' dtype.

        Returns:
            [N, 4] xyxy boxes (not clipped to the image).
        """
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths, heights, ctr_x, ctr_y = self._sizes_and_centres(anchors)
        dx = deltas[:, 0] / wx
        dy = deltas[:, 1] / wy
        # Clamping only from above keeps exp() finite for huge predicted sizes.
        dw = torch.clamp(deltas[:, 2] / ww, max=self.clip)
        dh = torch.clamp(deltas[:, 3] / wh, max=self.clip)
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights
        return torch.stack(
            (
                pred_ctr_x - 0.5 * (pred_w - 1),
                pred_ctr_y - 0.5 * (pred_h - 1),
                pred_ctr_x + 0.5 * (pred_w - 1),
                pred_ctr_y + 0.5 * (pred_h - 1),
            ),
            dim=1,
        )
