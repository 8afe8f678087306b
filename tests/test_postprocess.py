"""Phrase scoring, per-label NMS and ATSS post-processing: synthetic cases and the golden data."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file

from glipcli.config import AnchorConfig, PostProcessConfig
from glipcli.modeling.anchors import grid_anchors
from glipcli.modeling.postprocess import (
    ATSSPostProcessor,
    Detections,
    clip_boxes,
    limit_detections,
    ml_nms,
    phrase_scores,
    rescale_boxes,
)

LEVELS = (3, 4, 5, 6, 7)
VARIANTS = ("tiny", "tiny_a")
CASES = ("det", "det_demo", "grounding")


# ---------------------------------------------------------------- phrase scores


def test_phrase_scores_mean_of_token_probabilities() -> None:
    logits = torch.tensor([[[0.0, 2.0, -1.0, 3.0], [-4.0, 1.0, 0.5, 0.0]]])  # [1, 2, 4]
    scores = phrase_scores(logits, [[1], [1, 2, 3], []])
    probs = logits.sigmoid()
    assert scores.shape == (1, 2, 3)
    torch.testing.assert_close(scores[..., 0], probs[..., 1])
    torch.testing.assert_close(scores[..., 1], (probs[..., 1] + probs[..., 2] + probs[..., 3]) / 3)
    assert torch.all(scores[..., 2] == 0)


# ---------------------------------------------------------------- ml_nms


def _nms(boxes: list[list[float]], scores: list[float], labels: list[int], thr: float) -> list[int]:
    return ml_nms(
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels),
        thr,
    ).tolist()


def test_ml_nms_uses_plus_one_areas() -> None:
    # Touching 2x2-pixel boxes: plain IoU is 0, with +1 widths they share a 1x2 column: IoU 2/6.
    boxes = [[0, 0, 1, 1], [1, 0, 2, 1]]
    assert _nms(boxes, [0.9, 0.8], [1, 1], 0.3) == [0]
    assert _nms(boxes, [0.9, 0.8], [1, 1], 0.34) == [0, 1]


def test_ml_nms_suppresses_only_strictly_above_threshold() -> None:
    # +1 areas: 100 and 50, intersection 50 -> IoU exactly 0.5.
    boxes = [[0, 0, 9, 9], [0, 0, 9, 4]]
    assert _nms(boxes, [0.9, 0.8], [1, 1], 0.5) == [0, 1]
    assert _nms(boxes, [0.9, 0.8], [1, 1], 0.499) == [0]


def test_ml_nms_labels_are_independent() -> None:
    box = [10, 10, 50, 50]
    # Identical boxes: different labels never suppress each other.
    assert _nms([box, box, box], [0.9, 0.8, 0.7], [1, 2, 1], 0.6) == [0, 1]
    # Label 2's best box (index 1) survives although it overlaps label 1's better box.
    assert _nms([box, box, box], [0.9, 0.8, 0.7], [1, 2, 2], 0.6) == [0, 1]


def test_ml_nms_is_greedy_in_score_order() -> None:
    # A suppresses B; B would suppress C, but B is gone and C overlaps A little -> C kept.
    a, b, c = [0, 0, 9, 9], [3, 0, 12, 9], [6, 0, 15, 9]
    assert _nms([c, a, b], [0.5, 0.9, 0.7], [1, 1, 1], 0.4) == [0, 1]


def test_ml_nms_returns_ascending_indices() -> None:
    boxes = [[0, 0, 5, 5], [20, 20, 25, 25], [40, 40, 45, 45], [0, 0, 5, 5]]
    assert _nms(boxes, [0.1, 0.9, 0.5, 0.3], [1, 1, 1, 1], 0.6) == [1, 2, 3]
    assert ml_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.6).numel() == 0


def test_ml_nms_matches_per_label_torchvision_with_shifted_boxes() -> None:
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=gen) * 40 + 1], dim=1)
    scores = torch.rand(300, generator=gen)
    labels = torch.randint(1, 4, (300,), generator=gen)
    expected = []
    for label in labels.unique():
        members = torch.nonzero(labels == label).squeeze(1)
        shifted = boxes[members] + torch.tensor([0.0, 0.0, 1.0, 1.0])
        expected.append(members[torchvision.ops.nms(shifted, scores[members], 0.6)])
    expected = torch.sort(torch.cat(expected)).values
    keep = ml_nms(boxes, scores, labels, 0.6)
    assert 0 < keep.numel() < 300
    assert torch.equal(keep, expected)


# ---------------------------------------------------------------- cap, clip, rescale


def test_limit_detections_kthvalue_threshold_and_ties() -> None:
    def dets(scores: list[float]) -> Detections:
        n = len(scores)
        return Detections(torch.arange(4 * n, dtype=torch.float32).view(n, 4), torch.tensor(scores), torch.ones(n, dtype=torch.long))

    capped = limit_detections(dets([0.7, 0.1, 0.9, 0.8]), 2)
    assert capped.scores.tolist() == pytest.approx([0.9, 0.8])  # original order kept
    assert torch.equal(capped.boxes, dets([0.7, 0.1, 0.9, 0.8]).boxes[[2, 3]])
    # Ties at the threshold keep more than max_detections.
    assert len(limit_detections(dets([0.9, 0.5, 0.5, 0.5, 0.1]), 2)) == 4
    assert len(limit_detections(dets([0.3, 0.2]), 2)) == 2


def test_clip_boxes_to_unpadded_image() -> None:
    boxes = torch.tensor([[-5.0, -3.0, 600.0, 50.0], [10.0, 400.0, 20.0, 500.0], [510.0, 340.0, 520.0, 350.0]])
    clipped = clip_boxes(boxes, (336, 504))
    assert clipped.tolist() == [
        [0.0, 0.0, 503.0, 50.0],
        [10.0, 335.0, 20.0, 335.0],
        [503.0, 335.0, 503.0, 335.0],
    ]


def test_rescale_boxes_per_axis() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert rescale_boxes(boxes, (100, 200), (50, 800)).tolist() == [[40.0, 10.0, 120.0, 20.0]]


# ---------------------------------------------------------------- candidate selection (synthetic)


def _one_level_inputs(phrase: torch.Tensor, center_logits: torch.Tensor, width: int):
    """Level with H=1, W=width, zero regression; phrase [width, P], center_logits [width]."""
    box_regression = torch.zeros(1, 4, 1, width)
    centerness = center_logits.view(1, 1, 1, width)
    (anchors,) = grid_anchors([(1, width)], sizes=[8], strides=[8])
    return box_regression, centerness, phrase.unsqueeze(0), anchors


def test_candidates_threshold_ranking_and_scores() -> None:
    phrase = torch.tensor([[0.9, 0.0], [0.5, 0.6], [0.05, 0.0], [0.04, 0.3]])
    center = torch.tensor([-5.0, 5.0, 0.0, 0.0])
    reg, ctr, ps, anchors = _one_level_inputs(phrase, center, 4)
    post = ATSSPostProcessor(PostProcessConfig(pre_nms_top_n=1000))
    (cands,) = post.level_candidates(reg, ctr, ps, anchors, [(8, 64)])
    # Strictly > 0.05; one location can give several (location, phrase) candidates.
    got = sorted(zip(cands.labels.tolist(), cands.boxes[:, 0].tolist(), cands.scores.tolist()))
    expected_pairs = [(1, 0, 0.9, -5.0), (1, 1, 0.5, 5.0), (2, 1, 0.6, 5.0), (2, 3, 0.3, 0.0)]
    expected = sorted(
        (label, anchors[loc, 0].clamp(min=0).item(), float(np.sqrt(p / (1 + np.exp(-c)))))
        for label, loc, p, c in expected_pairs
    )
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], rtol=1e-6)

    # The per-level cap ranks by phrase_score * sigmoid(centerness), not phrase_score alone:
    # location 0 (0.9, centerness -5) loses against location 1 (0.6 / 0.5, centerness +5).
    post2 = ATSSPostProcessor(PostProcessConfig(pre_nms_top_n=2))
    (top2,) = post2.level_candidates(reg, ctr, ps, anchors, [(8, 64)])
    assert sorted(top2.labels.tolist()) == [1, 2]
    assert torch.all(top2.boxes[:, 0] == anchors[1, 0].clamp(min=0))


def test_candidates_cap_with_ties() -> None:
    width = 10
    phrase = torch.full((width, 1), 0.5)
    phrase[[3, 7], 0] = 0.9
    reg, ctr, ps, anchors = _one_level_inputs(phrase, torch.zeros(width), width)
    post = ATSSPostProcessor(PostProcessConfig(pre_nms_top_n=4))
    (cands,) = post.level_candidates(reg, ctr, ps, anchors, [(8, 80)])
    assert len(cands) == 4
    locations = ((cands.boxes[:, 2] - anchors[0, 2]) / 8).round().long().tolist()
    assert len(set(locations)) == 4
    # Both strictly better locations are always in; two of the eight tied ones fill the cap.
    assert {3, 7} <= set(locations)
    assert sorted(cands.scores.tolist()) == pytest.approx([0.5, 0.5, np.sqrt(0.45), np.sqrt(0.45)])


def test_postprocessor_batches_clip_per_image() -> None:
    phrase = torch.full((2, 1), 0.9)
    reg, ctr, ps, anchors = _one_level_inputs(phrase, torch.zeros(2), 2)
    reg = torch.zeros(2, 4, 1, 2)
    reg[:, 2:] = 5 * 2.0  # widen the boxes so that they cross the image border
    out = ATSSPostProcessor()([reg], [ctr.expand(2, -1, -1, -1)], [ps.expand(2, -1, -1)], [anchors], [(8, 16), (6, 12)])
    assert len(out) == 2
    assert out[0].boxes[:, 2].max().item() == 15 and out[0].boxes[:, 3].max().item() == 7
    assert out[1].boxes[:, 2].max().item() == 11 and out[1].boxes[:, 3].max().item() == 5
    assert out[0].labels.dtype == torch.int64


# ---------------------------------------------------------------- golden


@lru_cache(maxsize=None)
def _load(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def _golden_case(golden_dir: Path, variant: str, case: str):
    outputs = _load(golden_dir / variant / f"outputs_{case}.safetensors")
    head = _load(golden_dir / "tiny_a" / "outputs_visual_head.safetensors") if variant == "tiny_a" else outputs
    prompts = json.loads((golden_dir / variant / "prompts.json").read_text())[case]
    label_to_token = prompts["label_to_token"]
    spans = [label_to_token[str(label)] for label in range(1, len(label_to_token) + 1)]
    backbone = _load(golden_dir / "tiny" / "outputs_visual_backbone.safetensors")
    anchors = [backbone[f"anchors_p{lv}"] for lv in LEVELS]
    feature_sizes = [tuple(head[f"centerness_p{lv}"].shape[-2:]) for lv in LEVELS]
    assert torch.equal(torch.cat(anchors), torch.cat(grid_anchors(feature_sizes, AnchorConfig().sizes, AnchorConfig().strides)))
    inputs = _load(golden_dir / "tiny" / "inputs.safetensors")
    image_hw = tuple(inputs["image_size_hw"].tolist())
    original_hw = tuple(inputs["original_size_hw"].tolist())
    args = (
        [head[f"bbox_reg_p{lv}"] for lv in LEVELS],
        [head[f"centerness_p{lv}"] for lv in LEVELS],
        [outputs[f"phrase_scores_p{lv}"] for lv in LEVELS],
        anchors,
        [image_hw],
    )
    return outputs, spans, args, image_hw, original_hw


def _canonical(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Order-independent form: sorted by (score desc, label, x1, y1, x2, y2)."""
    keys = [boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], labels, -scores.double()]
    order = torch.from_numpy(np.lexsort([k.double().numpy() for k in keys]))
    return boxes[order], scores[order], labels[order]


CASE_PARAMS = [(v, c) for v in VARIANTS for c in CASES]


@pytest.mark.parametrize("variant, case", CASE_PARAMS)
def test_phrase_scores_match_golden(golden_dir: Path, variant: str, case: str) -> None:
    outputs, spans, _, _, _ = _golden_case(golden_dir, variant, case)
    for lv in LEVELS:
        ours = phrase_scores(outputs[f"dot_product_logits_p{lv}"], spans)
        torch.testing.assert_close(ours, outputs[f"phrase_scores_p{lv}"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant, case", CASE_PARAMS)
def test_prenms_candidates_match_golden(golden_dir: Path, variant: str, case: str) -> None:
    outputs, _, args, _, _ = _golden_case(golden_dir, variant, case)
    (cands,) = ATSSPostProcessor(PostProcessConfig()).candidates(*args)
    assert len(cands) == outputs["prenms_scores"].numel()
    boxes, scores, labels = _canonical(cands.boxes, cands.scores, cands.labels)
    g_boxes, g_scores, g_labels = _canonical(outputs["prenms_boxes"], outputs["prenms_scores"], outputs["prenms_labels"])
    assert torch.equal(labels, g_labels)
    torch.testing.assert_close(scores, g_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes, g_boxes, atol=1e-3, rtol=0)


@pytest.mark.parametrize("variant, case", CASE_PARAMS)
def test_final_detections_match_golden(golden_dir: Path, variant: str, case: str) -> None:
    outputs, _, args, image_hw, original_hw = _golden_case(golden_dir, variant, case)
    post = ATSSPostProcessor(PostProcessConfig())
    (final,) = post(*args)
    if "num_after_nms" in outputs:
        (cands,) = post.candidates(*args)
        assert len(post.nms(cands)) == outputs["num_after_nms"].item()
    assert len(final) == outputs["final_scores"].numel()
    boxes, scores, labels = _canonical(final.boxes, final.scores, final.labels)
    g_boxes, g_scores, g_labels = _canonical(
        outputs["final_boxes_resized"], outputs["final_scores"], outputs["final_labels"]
    )
    assert torch.equal(labels, g_labels)
    torch.testing.assert_close(scores, g_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes, g_boxes, atol=1e-3, rtol=0)

    g_original, _, _ = _canonical(outputs["final_boxes_original"], outputs["final_scores"], outputs["final_labels"])
    torch.testing.assert_close(rescale_boxes(boxes, image_hw, original_hw), g_original, atol=1e-3, rtol=0)


@pytest.mark.parametrize("variant, case", CASE_PARAMS)
def test_rescale_boxes_reproduces_original_bitwise(golden_dir: Path, variant: str, case: str) -> None:
    outputs, _, _, image_hw, original_hw = _golden_case(golden_dir, variant, case)
    rescaled = rescale_boxes(outputs["final_boxes_resized"], image_hw, original_hw)
    assert torch.equal(rescaled, outputs["final_boxes_original"])
