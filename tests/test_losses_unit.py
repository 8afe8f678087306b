"""Unit tests of the loss building blocks on small hand-checked inputs (no golden data)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glipcli.config import GLIPConfig
from glipcli.losses import (ATSSAssigner, DensePredictions, GLIPLoss, TrainTarget, centerness_targets,
                            giou_loss, pairwise_iou, resolve_max_iou, token_sigmoid_focal_loss,
                            token_targets)
from glipcli.modeling.anchors import grid_anchors
from glipcli.modeling.box_coder import BoxCoder
from glipcli.modeling.glip import GLIPOutputs
from glipcli.modeling.head import HeadOutputs

# ---------------------------------------------------------------- IoU / GIoU


def test_pairwise_iou_plus_one_convention():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # 10 x 10 pixels with +1
    b = torch.tensor([[5.0, 0.0, 14.0, 9.0], [20.0, 20.0, 29.0, 29.0]])
    assert pairwise_iou(a, b).tolist() == [[pytest.approx(50 / 150), 0.0]]
    # without +1 the same boxes are 9 x 9 and overlap 4 x 9
    assert pairwise_iou(a, b, plus_one=False)[0, 0].item() == pytest.approx(36 / (81 + 81 - 36))


def test_giou_loss_values():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 7.0, 7.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    losses = giou_loss(pred, target)
    # areas WITHOUT +1: inter 1, union 7, enclosing 9
    assert losses[0].item() == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-6)
    assert losses[1].item() == pytest.approx(0.0, abs=1e-6)
    # disjoint: IoU 0, enclosing 49, union 5
    assert losses[2].item() == pytest.approx(1 + (49 - 5) / 49, rel=1e-6)


def test_giou_loss_inverted_prediction_is_finite_with_gradient():
    pred = torch.tensor([[4.0, 4.0, 1.0, 1.0]], requires_grad=True)  # x2 < x1: raised to x1
    loss = giou_loss(pred, torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()
    assert 1.0 < loss.item() < 2.0


# ---------------------------------------------------------------- focal loss


def test_token_focal_loss_formula_and_mask():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, generator=gen) * 3
    targets = (torch.rand(2, 5, 6, generator=gen) > 0.7).float()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = 0.25 * targets + 0.75 * (1 - targets)
    expected = (alpha_t * ce * (1 - p_t) ** 2 * mask[:, None, :]).sum()
    ours = token_sigmoid_focal_loss(logits, targets, mask, alpha=0.25, gamma=2.0)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)
    # masked positions do not matter at all
    changed = logits.masked_fill(mask[:, None, :] == 0, 123.0)
    assert torch.equal(token_sigmoid_focal_loss(changed, targets, mask), ours)
    # gamma 0 and no alpha: plain BCE
    bce = (ce * mask[:, None, :]).sum()
    assert token_sigmoid_focal_loss(logits, targets, mask, alpha=-1, gamma=0.0).item() == pytest.approx(
        bce.item(), rel=1e-6)


# ---------------------------------------------------------------- ATSS


def test_resolve_max_iou_prefers_higher_iou_and_lower_index_on_ties():
    ious = torch.tensor([[0.5, 0.7], [0.4, 0.4], [0.9, 0.1], [0.3, 0.3]])
    candidate_idx = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]])
    positive = torch.tensor([[True, True], [True, True], [True, False], [False, False]])
    assert resolve_max_iou(ious, candidate_idx, positive).tolist() == [1, 0, 0, -1]


def test_atss_single_box_assignment_properties():
    anchors = grid_anchors([(8, 8), (4, 4)], sizes=(16, 32), strides=(4, 8))
    gt = torch.tensor([[6.0, 6.0, 21.0, 21.0]])
    a = ATSSAssigner(topk=4)(anchors, gt)
    assert a.candidate_idx.shape == (8, 1)  # 4 per level
    assert (a.iou_thresh == a.iou_mean + a.candidate_ious.std(0)).all()
    pos = a.positive_indices
    assert pos.numel() > 0
    allanchors = torch.cat(anchors)
    centres = (allanchors[pos, :2] + allanchors[pos, 2:]) / 2
    assert ((centres > gt[0, :2] + 0.01) & (centres < gt[0, 2:] - 0.01)).all()
    assert (a.ious[pos, 0] >= a.iou_thresh[0]).all()
    assert set(pos.tolist()) <= set(a.candidate_idx[:, 0].tolist())


def test_atss_without_boxes_is_all_negative():
    anchors = grid_anchors([(4, 4)], sizes=(16,), strides=(4,))
    a = ATSSAssigner()(anchors, torch.zeros((0, 4)))
    assert a.num_positive == 0 and (a.gt_index == -1).all() and a.gt_index.shape == (16,)


# ---------------------------------------------------------------- targets


def test_token_targets_no_object_position():
    gt_index = torch.tensor([1, -1, 0, -1])
    pmap = torch.zeros(2, 256)
    pmap[0, 1:3] = 1
    pmap[1, 4] = 1
    full = token_targets(gt_index, pmap, num_tokens=256, max_query_len=256)
    assert torch.equal(full[0], pmap[1]) and torch.equal(full[2], pmap[0])
    assert full[1].nonzero().flatten().tolist() == [255] and full[3].nonzero().flatten().tolist() == [255]
    # trimmed token axis: the no-object position does not exist, negatives are all zero
    trimmed = token_targets(gt_index, pmap, num_tokens=9, max_query_len=256)
    assert torch.equal(trimmed, full[:, :9]) and not trimmed[[1, 3]].any()
    # a narrower map is zero-padded; a map marking tokens beyond the axis is refused
    assert torch.equal(token_targets(gt_index, pmap[:, :9], 256, 256), full)
    with pytest.raises(ValueError, match="beyond"):
        token_targets(gt_index, pmap, num_tokens=4, max_query_len=256)
    with pytest.raises(ValueError, match="max_query_len"):
        token_targets(gt_index, pmap, num_tokens=257, max_query_len=256)


def test_centerness_targets():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0]])  # centre 4.5, 4.5
    gts = torch.tensor([[-5.5, -5.5, 14.5, 14.5], [2.5, 0.5, 10.5, 12.5]])
    ctr = centerness_targets(coder.encode(gts, anchors), anchors, coder)
    assert ctr[0].item() == pytest.approx(1.0, abs=1e-6)
    # l, r = 2, 6; t, b = 4, 8
    assert ctr[1].item() == pytest.approx(math.sqrt((2 / 6) * (4 / 8)), rel=1e-5)


def test_train_target_validates_shapes():
    with pytest.raises(ValueError, match="one per box"):
        TrainTarget(torch.zeros(2, 4), torch.zeros(3, 256))
    with pytest.raises(ValueError, match=r"\[G, 4\]"):
        TrainTarget(torch.zeros(2, 5), torch.zeros(2, 256))


# ---------------------------------------------------------------- GLIPLoss


def _synthetic_outputs(batch: int = 2, tokens: int = 12, requires_grad: bool = True) -> GLIPOutputs:
    gen = torch.Generator().manual_seed(1)
    sizes = [(8, 8), (4, 4)]
    anchors = grid_anchors(sizes, sizes=(32, 64), strides=(8, 16))

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.5).requires_grad_(requires_grad)

    head = HeadOutputs(
        token_logits=[rand(batch, h * w, tokens) for h, w in sizes],
        box_regression=[rand(batch, 4, h, w) for h, w in sizes],
        centerness=[rand(batch, 1, h, w) for h, w in sizes],
        visual=[], text=torch.zeros(batch, tokens, 4))
    return GLIPOutputs(head=head, anchors=anchors, features=[])


def _cfg() -> GLIPConfig:
    return GLIPConfig()


def test_dense_predictions_flatten_level_major_row_major():
    outputs = _synthetic_outputs()
    preds = DensePredictions.from_outputs(outputs)
    assert preds.anchors_per_level == (64, 16)
    assert preds.box_regression.shape == (2, 80, 4) and preds.centerness.shape == (2, 80)
    # anchor 64 + 4*1 + 2 = level 1, row 1, column 2
    assert torch.equal(preds.box_regression[1, 64 + 6], outputs.head.box_regression[1][1, :, 1, 2])
    assert preds.centerness[0, 9].item() == outputs.head.centerness[0][0, 0, 1, 1].item()
    assert torch.equal(preds.anchors_by_level()[1], outputs.anchors[1])


def test_glip_loss_backward_and_no_box_image():
    outputs = _synthetic_outputs()
    pmap = torch.zeros(1, 12)
    pmap[0, 2:4] = 1
    targets = [TrainTarget(torch.tensor([[10.0, 12.0, 40.0, 50.0]]), pmap),
               TrainTarget(torch.zeros((0, 4)), torch.zeros((0, 12)))]
    mask = torch.ones(2, 12, dtype=torch.long)
    out = GLIPLoss(_cfg()).compute(outputs, targets, mask)
    assert out.num_pos == out.assignments[0].num_positive > 0 and out.assignments[1].num_positive == 0
    assert not out.token_targets[1].any()  # 12 < 256 tokens: no no-object column
    total = sum(out.losses.values())
    total.backward()
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert outputs.head.token_logits[0].grad.abs().sum() > 0
    assert outputs.head.box_regression[0].grad.abs().sum() > 0
    assert outputs.head.centerness[0].grad.abs().sum() > 0


def test_glip_loss_without_any_box_keeps_graph():
    outputs = _synthetic_outputs(batch=1)
    targets = [TrainTarget(torch.zeros((0, 4)), torch.zeros((0, 12)))]
    losses = GLIPLoss(_cfg())(outputs, targets, torch.ones(1, 12, dtype=torch.long))
    assert losses["loss_reg"].item() == 0 and losses["loss_centerness"].item() == 0
    assert losses["loss_dot_product_token"].item() > 0  # all-negative focal loss / max(0, 1)
    sum(losses.values()).backward()


def test_reduce_mean_scales_the_normalisers():
    outputs = _synthetic_outputs(requires_grad=False)
    pmap = torch.zeros(1, 12)
    pmap[0, 1] = 1
    targets = [TrainTarget(torch.tensor([[10.0, 12.0, 40.0, 50.0]]), pmap)] * 2
    mask = torch.ones(2, 12, dtype=torch.long)
    single = GLIPLoss(_cfg())(outputs, targets, mask)
    # as if a second process had no positives: averaged normalisers are halved
    halved = GLIPLoss(_cfg(), reduce_mean=lambda t: t / 2)(outputs, targets, mask)
    for key in single:
        assert halved[key].item() == pytest.approx(2 * single[key].item(), rel=1e-6)


def test_glip_loss_rejects_mismatched_inputs():
    outputs = _synthetic_outputs(requires_grad=False)
    target = TrainTarget(torch.zeros((0, 4)), torch.zeros((0, 12)))
    loss = GLIPLoss(_cfg())
    with pytest.raises(ValueError, match="targets for a batch"):
        loss(outputs, [target], torch.ones(2, 12))
    with pytest.raises(ValueError, match="text_mask"):
        loss(outputs, [target, target], torch.ones(2, 256))
