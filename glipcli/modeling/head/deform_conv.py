"""Modulated deformable 3x3 convolution (DCNv2) with two interchangeable kernels.

`torchvision.ops.deform_conv2d` is the reference. On CPU a formulation with
`F.grid_sample` (bilinear sampling of each tap, zero outside the image) and one matrix product
per tap is faster; both compute the same function (the sampling rule "zero outside
(-1, H) x (-1, W), bilinear inside" is exactly grid_sample's bilinear sampling with zeros padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def deform_conv3x3_grid_sample(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                               weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
                               all_taps: bool | None = None) -> torch.Tensor:
    """x: [B, Cin, H, W]; offset: [B, 18, h, w] ((dy, dx) per tap, row-major taps);
    mask: [B, 9, h, w]; weight: [Cout, Cin, 3, 3]; padding 1. Returns [B, Cout, h, w].
    all_taps: sample the nine taps in one call (`_all_taps`; None: on a GPU).

    Tap by tap: sample the input at the tap's positions ([B, Cin, h*w], the layout grid_sample
    writes), modulate by the tap's mask (a contiguous broadcast), and accumulate W_tap @ samples
    into [B, Cout, h*w], already the output's layout. Nothing is ever transposed, and the
    working set is one tap's samples (an im2col matrix of all nine taps would be 9x larger and
    need a transposing copy)."""
    b, cin, height, width = x.shape
    h, w = offset.shape[-2:]
    offset = offset.float()  # pixel coordinates need float32 even when the model runs in 16 bits
    dtype, device = offset.dtype, offset.device
    # tap offsets (-1, 0, 1) made on the device, not copied from the host (capturable in a CUDA graph)
    taps = torch.arange(9, device=device)
    tap_dy = (taps // 3 - 1).to(dtype).view(1, 9, 1, 1)
    tap_dx = (taps % 3 - 1).to(dtype).view(1, 9, 1, 1)
    rows = (torch.arange(h, dtype=dtype, device=device) * stride).view(1, 1, h, 1)
    cols = (torch.arange(w, dtype=dtype, device=device) * stride).view(1, 1, 1, w)
    # Normalised coordinates for align_corners=False (pixel i spans [i-0.5, i+0.5]); unlike
    # align_corners=True this also maps positions correctly when a side has a single pixel.
    gy = (2.0 * (rows + tap_dy + offset[:, 0::2]) + 1.0) / height - 1.0  # [B, 9, h, w]
    gx = (2.0 * (cols + tap_dx + offset[:, 1::2]) + 1.0) / width - 1.0
    if x.is_cuda if all_taps is None else all_taps:
        return _all_taps(x, torch.stack((gx, gy), dim=-1).view(b, 9, h * w, 2), mask, weight, bias, h, w)
    grid = torch.stack((gx, gy), dim=-1).view(b, 9, 1, h * w, 2)
    taps_mask = mask.float().reshape(b, 9, 1, h * w)
    # Sampling runs in float32 (torch's reduced-precision grid_sample CPU kernels are far slower,
    # and coordinates need the precision) on a channels-last copy (faster, the same values).
    # (`to` copies even a channels-last view, such as a fused level of the head, so it is not asked to.)
    source = x if x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last) else (
        x.to(torch.float32, memory_format=torch.channels_last))
    kernel = weight.permute(2, 3, 0, 1).reshape(9, weight.shape[0], cin)  # [tap, Cout, Cin]
    differentiable = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, offset, mask, weight) + ((bias,) if bias is not None else ()))
    out = None
    for tap in range(9):
        samples = F.grid_sample(source, grid[:, tap], mode="bilinear", padding_mode="zeros",
                                align_corners=False).view(b, cin, h * w)
        modulation = taps_mask[:, tap : tap + 1].view(b, 1, h * w)
        samples = samples * modulation if differentiable else samples.mul_(modulation)
        # in the weights' dtype (under autocast, matmul itself casts to the autocast dtype)
        contribution = torch.matmul(kernel[tap], samples.to(kernel.dtype)).float()  # [B, Cout, h*w]
        out = contribution if out is None else out + contribution if differentiable else out.add_(contribution)
        del samples, contribution  # not kept while the next tap is sampled
    out = _with_bias(out, bias, differentiable)
    return out.to(weight.dtype).view(b, -1, h, w)  # accumulated in float32, returned in the weights' dtype


def _all_taps(x: torch.Tensor, grid: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None, h: int, w: int) -> torch.Tensor:
    """The GPU form: all nine taps in one grid_sample ([B, Cin, 9, h*w]: CUDA's kernel runs one
    thread per output position and loops over channels, so one tap at a time leaves most of the
    device idle) and one product with the weights read as [Cout, Cin*9], whose (channel, tap)
    order is the samples' own. grid: [B, 9, h*w, 2] normalised (x, y)."""
    b, cin = x.shape[:2]
    samples = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples * mask.float().view(b, 1, 9, h * w)
    out = torch.matmul(weight.reshape(weight.shape[0], cin * 9), samples.view(b, cin * 9, h * w).to(weight.dtype))
    return _with_bias(out.float(), bias, differentiable=True).to(weight.dtype).view(b, -1, h, w)


def _with_bias(out: torch.Tensor, bias: torch.Tensor | None, differentiable: bool) -> torch.Tensor:
    """out [B, Cout, h*w] (float32) plus the bias, in place unless autograd needs `out`."""
    if bias is None:
        return out
    return out + bias.float().view(1, -1, 1) if differentiable else out.add_(bias.float().view(1, -1, 1))


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
