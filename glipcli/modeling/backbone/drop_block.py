"""DropBlock regularisation for conv feature maps (Ghiasi et al., 2018), training only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DropBlock2D(nn.Module):
    """Zero random `block_size` x `block_size` squares of a feature map, shared over channels.

    Seeds are drawn per sample and location with probability `drop_prob / block_size^2`; each seed
    is grown to a square by max-pooling, and the kept activations are rescaled by
    (mask elements / kept elements). Identity in eval mode or when `drop_prob` is 0.
    """

    def __init__(self, drop_prob: float, block_size: int) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]"""
        if not self.training or self.drop_prob == 0.0:
            return x
        gamma = self.drop_prob / self.block_size**2
        b, _, h, w = x.shape
        seeds = (torch.rand(b, 1, h, w, device=x.device) < gamma).to(x.dtype)
        dropped = F.max_pool2d(
            seeds, kernel_size=self.block_size, stride=1, padding=self.block_size // 2
        )
        if self.block_size % 2 == 0:
            # Even kernels pad one extra row/column; keep the map size.
            dropped = dropped[:, :, :h, :w]
        keep = 1.0 - dropped
        # Guard the (vanishingly rare) all-dropped case against a division by zero.
        scale = keep.numel() / keep.sum().clamp_min(1.0)
        return x * keep * scale

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"
