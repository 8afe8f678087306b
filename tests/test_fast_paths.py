"""The faster formulations compute the same functions as the reference ones."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from glipcli.modeling.fusion.bi_attention import BiMultiHeadAttention, softmax_over_positions
from glipcli.modeling.head.deform_conv import deform_conv3x3_grid_sample


@pytest.mark.parametrize("length,real", [(5, 5), (9, 6), (13, 1)])
def test_factorized_fusion_equals_projected(length, real):
    torch.manual_seed(length)
    attn = BiMultiHeadAttention(v_dim=32, l_dim=24, embed_dim=256, num_heads=8).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    v, l = torch.randn(2, 97, 32), torch.randn(2, length, 24)
    mask = torch.zeros(2, length, dtype=torch.long)
    mask[:, :real] = 1
    assert 8 * length < 256  # the dispatcher picks the factorized path here
    ref_v, ref_l = attn._forward_projected(v, l, mask)
    out_v, out_l = attn(v, l, mask)
    torch.testing.assert_close(out_v, ref_v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_l, ref_l, rtol=1e-4, atol=1e-4)


def test_softmax_over_positions_is_the_same_either_way():
    """The GPU's order (transpose, then the last-axis softmax) gives the CPU's result."""
    torch.manual_seed(0)
    logits = torch.randn(2, 300, 24) * 20
    cpu_way = softmax_over_positions(logits, transpose_first=False)
    gpu_way = softmax_over_positions(logits, transpose_first=True)
    assert cpu_way.shape == gpu_way.shape == (2, 24, 300)
    torch.testing.assert_close(gpu_way, cpu_way, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cpu_way.sum(-1), torch.ones(2, 24))
    assert torch.equal(softmax_over_positions(logits), cpu_way)  # on the CPU: the strided softmax


def test_factorized_fusion_with_dropout_keeps_the_bias_term(monkeypatch):
    """In training the text-side probabilities no longer sum to one; the bias must follow.

    The two formulations lay their probabilities out differently, so a random dropout mask would
    fall on different entries; an elementwise stand-in (drop the probabilities above 0.2, scale
    the rest) drops the same entries in both."""
    from glipcli.modeling.fusion import bi_attention

    def stand_in(x, p=0.5, training=True, inplace=False):
        return x * (x < 0.2) / (1 - p) if training else x

    monkeypatch.setattr(bi_attention.F, "dropout", stand_in)
    attn = BiMultiHeadAttention(v_dim=16, l_dim=8, embed_dim=64, num_heads=4, dropout=0.5).train()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    v, l = torch.randn(1, 40, 16), torch.randn(1, 3, 8)
    ref = attn._forward_projected(v, l, None)
    out = attn._forward_factorized(v, l, None)
    without = attn.eval()._forward_factorized(v, l, None)
    assert not torch.allclose(out[1], without[1], atol=1e-3)  # the stand-in did drop something
    torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-4, atol=1e-4)


def test_factorized_fusion_gradients_equal_projected():
    torch.manual_seed(1)
    attn = BiMultiHeadAttention(v_dim=16, l_dim=8, embed_dim=64, num_heads=4).eval()
    v, l = torch.randn(2, 30, 16, requires_grad=True), torch.randn(2, 5, 8, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    grads = []
    for forward in (attn._forward_projected, attn._forward_factorized):
        out_v, out_l = forward(v, l, mask)
        (out_v.square().sum() + out_l.square().sum()).backward()
        grads.append([v.grad.clone(), l.grad.clone(), attn.v_proj.weight.grad.clone()])
        v.grad = l.grad = None
        attn.zero_grad()
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,stride,out_hw", [
    ((2, 16, 11, 13), 1, (11, 13)),
    ((2, 16, 11, 13), 2, (6, 7)),
    ((1, 8, 1, 5), 1, (1, 5)),
    ((1, 8, 4, 1), 1, (4, 1)),
    ((1, 8, 1, 1), 1, (1, 1)),
])
@pytest.mark.parametrize("all_taps", [False, True], ids=["tap-by-tap", "all-taps"])
def test_grid_sample_deform_conv_equals_torchvision(shape, stride, out_hw, all_taps):
    """Both forms (tap by tap: the CPU's; all nine taps in one sampling: the GPU's) against the reference."""
    torch.manual_seed(sum(shape))
    b, c, _, _ = shape
    x = torch.randn(shape)
    weight, bias = torch.randn(c, c, 3, 3), torch.randn(c)
    offset = torch.randn(b, 18, *out_hw) * 3  # large: many taps fall outside the map
    mask = torch.rand(b, 9, *out_hw)
    ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    out = deform_conv3x3_grid_sample(x, offset, mask, weight, bias, stride, all_taps=all_taps)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_grid_sample_deform_conv_gradients_match_torchvision():
    """Training goes through the same kernel: its gradients must agree too."""
    torch.manual_seed(3)
    x = torch.randn(1, 4, 70, 70, requires_grad=True)  # 4900 positions: more than one slice
    weight = torch.randn(4, 4, 3, 3, requires_grad=True)
    offset = (torch.randn(1, 18, 70, 70) * 2).requires_grad_()
    mask = torch.rand(1, 9, 70, 70).requires_grad_()
    deform_conv2d(x, offset, weight, None, padding=1, mask=mask).square().sum().backward()
    ref = [t.grad.clone() for t in (x, weight, offset, mask)]
    for t in (x, weight, offset, mask):
        t.grad = None
    deform_conv3x3_grid_sample(x, offset, mask, weight, None).square().sum().backward()
    for got, want in zip((x.grad, weight.grad, offset.grad, mask.grad), ref):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_grid_sample_deform_conv_in_bfloat16_and_over_several_slices():
    """The inference path (no autograd) with bfloat16 weights, over more than one slice of positions."""
    torch.manual_seed(5)
    x, weight, bias = torch.randn(1, 8, 70, 70), torch.randn(8, 8, 3, 3) / 8, torch.randn(8)
    offset, mask = torch.randn(1, 18, 70, 70) * 2, torch.rand(1, 9, 70, 70)
    ref = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    with torch.inference_mode():
        out32 = deform_conv3x3_grid_sample(x, offset, mask, weight, bias)
        out16 = deform_conv3x3_grid_sample(x.bfloat16(), offset.bfloat16(), mask.bfloat16(), weight.bfloat16(),
                                           bias.bfloat16())
    torch.testing.assert_close(out32, ref, rtol=1e-4, atol=1e-4)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), ref, rtol=0.05, atol=0.1)
