"""The faster formulations compute the same functions as the reference ones."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from glipcli.modeling.fusion.bi_attention import BiMultiHeadAttention
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


def test_factorized_fusion_with_dropout_keeps_the_bias_term():
    """In training the text-side probabilities no longer sum to one; the bias must follow."""
    attn = BiMultiHeadAttention(v_dim=16, l_dim=8, embed_dim=64, num_heads=4, dropout=0.5).train()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    v, l = torch.randn(1, 40, 16), torch.randn(1, 3, 8)
    torch.manual_seed(0)
    ref = attn._forward_projected(v, l, None)
    torch.manual_seed(0)
    out = attn._forward_factorized(v, l, None)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,stride,out_hw", [
    ((2, 16, 11, 13), 1, (11, 13)),
    ((2, 16, 11, 13), 2, (6, 7)),
    ((1, 8, 1, 5), 1, (1, 5)),
    ((1, 8, 4, 1), 1, (4, 1)),
    ((1, 8, 1, 1), 1, (1, 1)),
])
def test_grid_sample_deform_conv_equals_torchvision(shape, stride, out_hw):
    torch.manual_seed(sum(shape))
    b, c, _, _ = shape
    x = torch.randn(shape)
    weight, bias = torch.randn(c, c, 3, 3), torch.randn(c)
    offset = torch.randn(b, 18, *out_hw) * 3  # large: many taps fall outside the map
    mask = torch.rand(b, 9, *out_hw)
    ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    out = deform_conv3x3_grid_sample(x, offset, mask, weight, bias, stride)
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
