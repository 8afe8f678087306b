"""Modulated deformable 3x3 convolution (DCNv2) with two interchangeable kernels.

`torchvision.ops.deform_conv2d` is the reference. On CPU a formulation with
`F.grid_sample` (bilinear sampling of the 9 taps, zero outside the image) followed by one
matrix product is faster; both compute the same function (the sampling rule "zero outside
(-1, H) x (-1, W), bilinear inside" is exactly grid_sample's bilinear sampling with zeros padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TAP_DY = (-1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
_TAP_DX = (-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0)


def deform_conv3x3_grid_sample(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                               weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1
                               ) -> torch.Tensor:
    """x: [B, Cin, H, W]; offset: [B, 18, h, w] ((dy, dx) per tap, row-major taps);
    mask: [B, 9, h, w]; weight: [Cout, Cin, 3, 3]; padding 1. Returns [B, Cout, h, w]."""
    b, cin, height, width = x.shape
    h, w = offset.shape[-2:]
    dtype, device = offset.dtype, offset.device
    tap_dy = torch.tensor(_TAP_DY, dtype=dtype, device=device).view(1, 9, 1, 1)
    tap_dx = torch.tensor(_TAP_DX, dtype=dtype, device=device).view(1, 9, 1, 1)
    rows = (torch.arange(h, dtype=dtype, device=device) * stride).view(1, 1, h, 1)
    cols = (torch.arange(w, dtype=dtype, device=device) * stride).view(1, 1, 1, w)
    y = rows + tap_dy + offset[:, 0::2]  # [B, 9, h, w]
    xx = cols + tap_dx + offset[:, 1::2]
    # Normalised coordinates for align_corners=False (pixel i spans [i-0.5, i+0.5]); unlike
    # align_corners=True this also maps positions correctly when a side has a single pixel.
    gx = (2.0 * xx + 1.0) / width - 1.0
    gy = (2.0 * y + 1.0) / height - 1.0
    # Grid [B, h*w, 9, 2]. With a channels-last input, grid_sample writes its samples as
    # [B, h*w, 9, Cin] in memory, which is directly the (tap, channel) column matrix.
    grid = torch.stack((gx, gy), dim=-1).permute(0, 2, 3, 1, 4).reshape(b, h * w, 9, 2)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    samples = F.grid_sample(x_cl, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples.permute(0, 2, 3, 1)  # [B, h*w, 9, Cin]
    samples = samples * mask.permute(0, 2, 3, 1).reshape(b, h * w, 9, 1).to(x.dtype)
    columns = samples.reshape(b, h * w, 9 * cin)
    kernel = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 9 * cin)  # (tap, channel) order
    out = columns @ kernel.t()
    if bias is not None:
        out = out + bias
    return out.transpose(1, 2).reshape(b, -1, h, w)


def modulated_deform_conv3x3(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                             weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
                             impl: str = "auto") -> torch.Tensor:
    """Dispatch: `impl` is "torchvision", "grid_sample" or "auto" (grid_sample on CPU)."""
    if impl == "auto":
        impl = "grid_sample" if x.device.type == "cpu" else "torchvision"
    if impl == "grid_sample":
        return deform_conv3x3_grid_sample(x, offset, mask, weight, bias, stride)
    from torchvision.ops import deform_conv2d  # imported here: the CPU path does not need torchvision

    return deform_conv2d(x, offset.to(x.dtype), weight, bias, stride=stride, padding=1, mask=mask.to(x.dtype))
