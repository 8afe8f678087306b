"""DyConv: the visual half of a DyHead layer (scale-aware attention over neighbouring pyramid
levels, modulated deformable 3x3 convolutions, DyReLU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glipcli.modeling.head.deform_conv import modulated_deform_conv3x3


def h_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class DeformConvNorm(nn.Module):
    """Modulated deformable 3x3 convolution (with bias) followed by GroupNorm."""

    def __init__(self, channels: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        self.impl = "auto"  # "torchvision" | "grid_sample" | "auto" (see deform_conv.py)
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(groups, channels)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W]; offset: [B, 18, h, w] (dy, dx per tap); mask: [B, 9, h, w] in 0..1,
        where (h, w) is the output grid."""
        y = modulated_deform_conv3x3(x, offset, mask, self.conv.weight, self.conv.bias,
                                     stride=self.stride, impl=self.impl)
        return self.norm(y)


class DyReLU(nn.Module):
    """Dynamic ReLU: out = max(x * a1 + b1, x * a2 + b2) with coefficients from global context."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        squeeze = max(4, int(channels // reduction + 2) // 4 * 4)
        if squeeze < 0.9 * (channels // reduction):
            squeeze += 4
        self.channels = channels
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, 4 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        b, c = x.shape[:2]
        coeffs = h_sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        a1, b1, a2, b2 = coeffs.view(b, 4 * c, 1, 1).split(c, dim=1)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        b1 = b1 - 0.5
        b2 = b2 - 0.5
        if not _in_place_allowed(x, coeffs):
            return torch.maximum(x * a1 + b1, x * a2 + b2)
        # the same operations, written into their own temporaries (one map fewer at a time)
        first = (x * a1).add_(b1)
        second = (x * a2).add_(b2)
        return torch.maximum(first, second, out=first)


def _in_place_allowed(*tensors: torch.Tensor) -> bool:
    """Whether an elementwise expression of `tensors` may be written into a temporary: in inference
    outside tracing (nothing records the temporaries), with one dtype (no type promotion, as
    under autocast, that an in-place result would not follow)."""
    return (not torch.is_grad_enabled() and not torch.jit.is_tracing()
            and len({t.dtype for t in tensors}) == 1)


def _reinterpret(t: torch.Tensor, channels: int, h: int, w: int) -> torch.Tensor:
    """Read the first channels*h*w values of each batch item of `t` as [channels, h, w].

    The official CUDA kernel indexes the offset/mask memory with the OUTPUT grid's size: when
    the coarser level reuses a finer level's offsets, it reads this contiguous prefix rather
    than a spatially aligned crop. Reproducing it is required to match official weights."""
    b = t.shape[0]
    return t.reshape(b, -1)[:, : channels * h * w].reshape(b, channels, h, w)


class DyConv(nn.Module):
    """One DyConv layer over all pyramid levels.

    For level l, three branches share the offsets/mask predicted from level l:
    `same_level`(x_l), `from_finer`(x_{l-1}, stride 2) and `from_coarser`(x_{l+1}, then
    bilinearly upsampled, align_corners=True). Each branch is weighted by a scale attention,
    averaged, then passed through DyReLU.
    """

    def __init__(self, channels: int, groups: int = 16):
        super().__init__()
        self.from_coarser = DeformConvNorm(channels, stride=1, groups=groups)
        self.same_level = DeformConvNorm(channels, stride=1, groups=groups)
        self.from_finer = DeformConvNorm(channels, stride=2, groups=groups)
        self.scale_attention = nn.Conv2d(channels, 1, kernel_size=1)
        self.dyrelu = DyReLU(channels)
        self.offset_mask = nn.Conv2d(channels, 27, kernel_size=3, padding=1)
        nn.init.normal_(self.scale_attention.weight, std=0.01)
        nn.init.zeros_(self.scale_attention.bias)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    def _attend(self, f: torch.Tensor) -> torch.Tensor:
        """Scale-aware attention weight [B, 1, 1, 1] of one branch feature [B, C, H, W]."""
        return h_sigmoid(F.relu(self.scale_attention(f.mean(dim=(2, 3), keepdim=True))))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: per level [B, C, H_l, W_l] (finest first) -> same shapes."""
        outputs = []
        last = len(features) - 1
        for level, x in enumerate(features):
            om = self.offset_mask(x)
            offset = om[:, :18]
            mask = om[:, 18:].sigmoid()
            h, w = x.shape[-2:]
            makers = [lambda: self.same_level(x, offset, mask)]
            if level > 0:
                makers.append(lambda: self.from_finer(features[level - 1], offset, mask))
            if level < last:
                makers.append(lambda: self._from_coarser(features[level + 1], offset, mask, (h, w)))
            outputs.append(self.dyrelu(self._weighted_mean(makers)))
        return outputs

    def _from_coarser(self, coarse: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                      size: tuple[int, int]) -> torch.Tensor:
        """The coarser level's branch, upsampled to `size` (the level's own grid)."""
        ch, cw = coarse.shape[-2:]
        y = self.from_coarser(coarse, _reinterpret(offset, 18, ch, cw), _reinterpret(mask, 9, ch, cw))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=True)

    def _weighted_mean(self, makers: list) -> torch.Tensor:
        """Mean over the branches [B, C, H, W] made by `makers` of branch * its scale attention.

        In float32 a running sum, made as each branch is (the same additions, in the same order,
        as a mean over the stacked branches: bitwise equal), keeps one branch at a time; in a
        reduced precision the branches are stacked, keeping the mean's float32 accumulation."""
        total, stacked = None, []
        for make in makers:
            branch = make()
            attention = self._attend(branch)
            # in inference the branch is this layer's own temporary
            weighted = branch.mul_(attention) if _in_place_allowed(branch, attention) else branch * attention
            if stacked or (total is None and weighted.dtype != torch.float32):
                stacked.append(weighted)
            elif total is None:
                total = weighted
            else:
                total = total.add_(weighted) if _in_place_allowed(total, weighted) else total + weighted
        if stacked:
            return torch.stack(stacked).mean(dim=0)
        return total.div_(len(makers)) if _in_place_allowed(total) else total / len(makers)
