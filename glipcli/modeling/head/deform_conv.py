"""Modulated deformable 3x3 convolution (DCNv2) with two interchangeable kernels.

`torchvision.ops.deform_conv2d` is the reference. On CPU a formulation with
`F.grid_sample` (bilinear sampling of the 9 taps, zero outside the image) followed by one
matrix product is faster; both compute the same function (the sampling rule "zero outside
(-1, H) x (-1, W), bilinear inside" is exactly grid_sample's bilinear sampling with zeros padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_POSITIONS_PER_SLICE = 4096
_TAP_DY = (-1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
_TAP_DX = (-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0)


def deform_conv3x3_grid_sample(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                               weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1
                               ) -> torch.Tensor:
    """x: [B, Cin, H, W]; offset: [B, 18, h, w] ((dy, dx) per tap, row-major taps);
    mask: [B, 9, h, w]; weight: [Cout, Cin, 3, 3]; padding 1. Returns [B, Cout, h, w]."""
    b, cin, height, width = x.shape
    h, w = offset.shape[-2:]
    offset = offset.float()  # pixel coordinates need float32 even when the model runs in 16 bits
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
    # Sampling runs in float32 (torch's reduced-precision grid_sample CPU kernels are far slower,
    # and coordinates need the precision); the matrix product runs in the weights' dtype.
    grid = torch.stack((gx, gy), dim=-1).permute(0, 2, 3, 1, 4).reshape(b, h * w, 9, 2).float()
    taps_mask = mask.permute(0, 2, 3, 1).reshape(b, h * w, 9, 1).float()
    source = x.float()
    kernel = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 9 * cin).t()  # (tap, channel) rows
    columns_dtype = kernel.dtype
    if torch.is_autocast_enabled(device.type):  # the product will run in the autocast dtype: write that
        columns_dtype = torch.get_autocast_dtype(device.type)
    differentiable = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, offset, mask, weight) + ((bias,) if bias is not None else ()))
    slices = []
    # Positions are processed in slices so the [positions, 9, Cin] sample matrix stays small
    # (at P3 of an 800x1333 image it would otherwise be several hundred MB).
    for begin in range(0, h * w, _POSITIONS_PER_SLICE):
        end = min(begin + _POSITIONS_PER_SLICE, h * w)
        samples = F.grid_sample(source, grid[:, begin:end], mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # [B, Cin, n, 9]
        taps = samples.permute(0, 2, 3, 1)  # [B, n, 9, Cin], a view
        if differentiable:
            columns = (taps * taps_mask[:, begin:end]).reshape(b, end - begin, 9 * cin).to(kernel.dtype)
        else:
            # Written straight into the product's layout and dtype: an elementwise result would
            # keep the permuted layout, and the reshape and the cast would each copy it again.
            columns = torch.empty(b, end - begin, 9, cin, dtype=columns_dtype, device=device)
            torch.mul(taps, taps_mask[:, begin:end], out=columns)
            columns = columns.view(b, end - begin, 9 * cin)
        slices.append(columns @ kernel)
    out = slices[0] if len(slices) == 1 else torch.cat(slices, dim=1)  # [B, h*w, Cout]
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
