"""The inference paths that save memory (windows attended a group at a time, MLP slices, in-place
temporaries) compute what the plain paths compute: bitwise in float32, the MLP slices up to rounding."""

from __future__ import annotations

import pytest
import torch

from glipcli.modeling.backbone import swin
from glipcli.modeling.backbone.swin import SwinStage, WindowAttention
from glipcli.modeling.fusion import BiAttentionBlock
from glipcli.modeling.head.deform_conv import deform_conv3x3_grid_sample
from glipcli.modeling.head.dyconv import DyConv


def _stage(dim: int = 16, heads: int = 2, window: int = 4) -> SwinStage:
    torch.manual_seed(0)
    stage = SwinStage(dim, depth=2, num_heads=heads, window=window, mlp_ratio=4.0, drop_paths=[0.0, 0.0],
                      downsample=True).eval()
    for block in stage.blocks:  # a non-zero position bias, so that a mixed-up window would show
        torch.nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)
    return stage


# qkv numbers per group: whole map at once (never grouped), 1 window a group (the smallest), and
# groups that do not divide the windows (a short last group), for a 4x4 window of 16 channels
@pytest.mark.parametrize("qkv_per_chunk", [16 * 48, 3 * 16 * 48, 7 * 16 * 48])
@pytest.mark.parametrize("batch", [1, 2])
def test_window_groups_equal_whole_map(monkeypatch, qkv_per_chunk, batch):
    stage = _stage()
    x = torch.randn(batch, 19, 23, 16)  # padded to 20 x 24: 5 x 6 windows, shifted and not
    monkeypatch.setattr(swin, "_ATTENTION_QKV_PER_CHUNK", 10**12)
    with torch.inference_mode():
        whole, whole_merged = stage(x)
    monkeypatch.setattr(swin, "_ATTENTION_QKV_PER_CHUNK", qkv_per_chunk)
    calls = []
    attend = WindowAttention._attend
    monkeypatch.setattr(WindowAttention, "_attend", lambda self, *a: calls.append(a[0].shape[0]) or attend(self, *a))
    with torch.inference_mode():
        grouped, grouped_merged = stage(x)
    assert len(calls) > 2 * 2  # both blocks ran in several groups
    assert sum(calls) == 2 * batch * 30  # every window of every image, once per block
    assert torch.equal(grouped, whole)
    assert torch.equal(grouped_merged, whole_merged)


@pytest.mark.parametrize("hidden_per_slice", [64, 64 * 5, 64 * 1000])  # 1 token, 5 (short last), all
def test_mlp_slices_equal_whole_map(monkeypatch, hidden_per_slice):
    """Up to rounding: a matrix product over a few rows may take another kernel (GLIP-T's slices
    of thousands of tokens gave bitwise the same detections)."""
    stage = _stage()
    x = torch.randn(1, 9, 11, 16)
    monkeypatch.setattr(swin, "_MLP_HIDDEN_PER_SLICE", 10**12)
    with torch.inference_mode():
        whole, _ = stage(x)
    monkeypatch.setattr(swin, "_MLP_HIDDEN_PER_SLICE", hidden_per_slice)
    with torch.inference_mode():
        sliced, _ = stage(x)
    torch.testing.assert_close(sliced, whole, rtol=1e-6, atol=1e-6)


def _pyramid(channels: int = 32, batch: int = 1) -> list[torch.Tensor]:
    return [torch.randn(batch, channels, h, w) for h, w in ((12, 17), (6, 9), (3, 5))]


@pytest.mark.parametrize("batch", [1, 2])
def test_dyconv_in_place_inference_equals_autograd_path(batch):
    """Inference sums the weighted branches as they are made, in place; training keeps them
    apart. Both equal the mean over the stacked branches."""
    torch.manual_seed(1)
    dyconv = DyConv(32, groups=4).eval()
    for p in dyconv.parameters():  # non-zero offsets and attention
        torch.nn.init.normal_(p, std=0.1)
    features = _pyramid(batch=batch)
    with torch.inference_mode():
        lean = dyconv(features)
    plain = dyconv([f.clone().requires_grad_() for f in features])
    for got, want in zip(lean, plain):
        assert torch.equal(got, want.detach())
    with torch.no_grad():  # the running sum is the stacked mean, bitwise
        branches = [dyconv.same_level(features[1], *_offset_mask(dyconv, features[1])),
                    dyconv.from_finer(features[0], *_offset_mask(dyconv, features[1]))]
        coarse = features[2]
        offset, mask = _offset_mask(dyconv, features[1])
        from glipcli.modeling.head.dyconv import _reinterpret
        y = dyconv.from_coarser(coarse, _reinterpret(offset, 18, 3, 5), _reinterpret(mask, 9, 3, 5))
        branches.append(torch.nn.functional.interpolate(y, size=(6, 9), mode="bilinear", align_corners=True))
        stacked = torch.stack([f * dyconv._attend(f) for f in branches]).mean(dim=0)
        assert torch.equal(dyconv.dyrelu(stacked), lean[1])


def _offset_mask(dyconv: DyConv, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    om = dyconv.offset_mask(x)
    return om[:, :18], om[:, 18:].sigmoid()


def test_dyconv_in_bfloat16_keeps_the_stacked_mean():
    torch.manual_seed(2)
    dyconv = DyConv(32, groups=4).eval()
    for p in dyconv.parameters():
        torch.nn.init.normal_(p, std=0.1)
    features = _pyramid()
    with torch.inference_mode():
        want = dyconv(features)
        got = dyconv.bfloat16()([f.bfloat16() for f in features])
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w, rtol=0.05, atol=0.05)


def test_fusion_in_place_inference_equals_autograd_path():
    torch.manual_seed(3)
    block = BiAttentionBlock(v_dim=32, l_dim=24, embed_dim=64, num_heads=4).eval()
    visual, text = _pyramid(), torch.randn(1, 5, 24)
    text_mask = torch.tensor([[1, 1, 1, 1, 0]])
    with torch.inference_mode():
        lean_v, lean_l = block(visual, text, text_mask)
    plain_v, plain_l = block([f.clone().requires_grad_() for f in visual], text, text_mask)
    for got, want in zip(lean_v, plain_v):
        assert torch.equal(got, want.detach())
    assert torch.equal(lean_l, plain_l.detach())


def test_deform_conv_reads_a_channels_last_view_as_its_copy():
    """A fused level is a channels-last view of the fusion's output; it is sampled without a copy."""
    torch.manual_seed(4)
    flat = torch.randn(1, 11 * 13 + 20, 16)  # [B, N, C], as the fusion writes it
    view = flat.transpose(1, 2)[:, :, : 11 * 13].reshape(1, 16, 11, 13)
    assert view.is_contiguous(memory_format=torch.channels_last) and not view.is_contiguous()
    offset, mask = torch.randn(1, 18, 11, 13) * 2, torch.rand(1, 9, 11, 13)
    weight, bias = torch.randn(16, 16, 3, 3), torch.randn(16)
    with torch.inference_mode():
        got = deform_conv3x3_grid_sample(view, offset, mask, weight, bias)
        want = deform_conv3x3_grid_sample(view.contiguous(), offset, mask, weight, bias)
    assert torch.equal(got, want)
