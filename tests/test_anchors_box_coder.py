"""Anchors and the ATSS box coder against the official conventions and the golden data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glipcli.config import AnchorConfig
from glipcli.modeling.anchors import cell_anchor, grid_anchors
from glipcli.modeling.box_coder import BoxCoder

LEVELS = (3, 4, 5, 6, 7)


# ---------------------------------------------------------------- anchors


@pytest.mark.parametrize(
    "size, stride, expected",
    [
        # README section 11 (= rpn.anchor_generator.cell_anchors.* of the official model)
        (64, 8, [-28, -28, 35, 35]),
        (128, 16, [-56, -56, 71, 71]),
        (256, 32, [-112, -112, 143, 143]),
        (512, 64, [-224, -224, 287, 287]),
        (1024, 128, [-448, -448, 575, 575]),
    ],
)
def test_cell_anchor_matches_official_values(size: int, stride: int, expected: list[int]) -> None:
    anchor = cell_anchor(size, stride)
    assert anchor.dtype == torch.float32
    assert anchor.tolist() == expected


def test_cell_anchor_plus_one_convention() -> None:
    anchor = cell_anchor(64, 8)
    # +1 convention: 64 pixels wide means x2 - x1 == 63, centred at (stride - 1) / 2.
    assert (anchor[2] - anchor[0]).item() == 63
    assert ((anchor[0] + anchor[2]) / 2).item() == 3.5


def test_grid_anchors_match_golden(golden_dir: Path) -> None:
    padded_h, padded_w = load_file(golden_dir / "tiny" / "inputs.safetensors")["image_tensor"].shape[-2:]
    cfg = AnchorConfig()
    feature_sizes = [(math.ceil(padded_h / s), math.ceil(padded_w / s)) for s in cfg.strides]
    assert feature_sizes == [(44, 64), (22, 32), (11, 16), (6, 8), (3, 4)]
    golden = load_file(golden_dir / "tiny" / "outputs_visual_backbone.safetensors")
    anchors = grid_anchors(feature_sizes, cfg.sizes, cfg.strides)
    assert len(anchors) == len(LEVELS)
    for level, ours in zip(LEVELS, anchors):
        expected = golden[f"anchors_p{level}"]
        assert ours.dtype == expected.dtype
        assert torch.equal(ours, expected), f"anchors_p{level}"


def test_grid_anchors_row_major_over_padded_map() -> None:
    (anchors,) = grid_anchors([(3, 5)], sizes=[32], strides=[16])
    assert anchors.shape == (15, 4)
    base = cell_anchor(32, 16)
    for k in range(15):
        y, x = divmod(k, 5)
        shift = torch.tensor([x * 16, y * 16, x * 16, y * 16], dtype=torch.float32)
        assert torch.equal(anchors[k], base + shift)


def test_grid_anchors_dtype_and_length_check() -> None:
    (anchors,) = grid_anchors([(2, 2)], sizes=[64], strides=[8], dtype=torch.float64)
    assert anchors.dtype == torch.float64
    with pytest.raises(ValueError):
        grid_anchors([(2, 2), (1, 1)], sizes=[64], strides=[8])


# ---------------------------------------------------------------- box coder


def _random_boxes(generator: torch.Generator, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * 400
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 200 + 2
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_hand_computed() -> None:
    coder = BoxCoder()
    anchor = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # 10 x 10 px (+1), centre 4.5
    gt = torch.tensor([[0.0, 0.0, 19.0, 9.0]])  # 20 x 10 px, centre (9.5, 4.5)
    deltas = coder.encode(gt, anchor)
    expected = torch.tensor([[10 * 5.0 / 10, 0.0, 5 * math.log(2.0), 0.0]])
    torch.testing.assert_close(deltas, expected)


def test_decode_zero_deltas_is_identity() -> None:
    anchors = _random_boxes(torch.Generator().manual_seed(0), 50)
    decoded = BoxCoder().decode(torch.zeros_like(anchors), anchors)
    torch.testing.assert_close(decoded, anchors, atol=1e-4, rtol=0)


def test_encode_decode_round_trip() -> None:
    gen = torch.Generator().manual_seed(1)
    coder = BoxCoder()
    anchors = _random_boxes(gen, 200, torch.float64)
    gt = _random_boxes(gen, 200, torch.float64)
    torch.testing.assert_close(coder.decode(coder.encode(gt, anchors), anchors), gt, atol=1e-9, rtol=0)
    deltas = torch.randn(200, 4, generator=gen, dtype=torch.float64) * 2
    torch.testing.assert_close(coder.encode(coder.decode(deltas, anchors), anchors), deltas, atol=1e-9, rtol=0)


def test_decode_clamps_size_deltas_from_above_only() -> None:
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 15.0, 31.0]] * 3, dtype=torch.float64)  # 16 x 32 px
    deltas = torch.tensor(
        [[0.0, 0.0, 1000.0, 1000.0], [0.0, 0.0, 5 * 3.0, 5 * 3.0], [0.0, 0.0, -100.0, -100.0]],
        dtype=torch.float64,
    )
    boxes = coder.decode(deltas, anchors)
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    # Huge deltas are clamped at log(1000/16): the size grows by at most 62.5x.
    torch.testing.assert_close(widths[0], torch.tensor(1000.0, dtype=torch.float64))
    torch.testing.assert_close(heights[0], torch.tensor(2000.0, dtype=torch.float64))
    # Below the clip value nothing changes: exp(3) x.
    torch.testing.assert_close(widths[1], torch.tensor(16 * math.exp(3.0), dtype=torch.float64))
    # Negative deltas are not clamped: the box shrinks towards zero size.
    assert 0 < widths[2].item() < 1e-6 and 0 < heights[2].item() < 1e-6


def test_box_coder_matches_golden_regression_targets(golden_dir: Path) -> None:
    """Encode reproduces the official ATSS regression targets bitwise; decode inverts them."""
    golden = load_file(golden_dir / "tiny" / "loss.safetensors")
    coder = BoxCoder()
    for image in (0, 1):
        positives = golden[f"atss_positive_anchor_idx_img{image}"]
        # Labels are 1..n per image, so the matched gt box is row label - 1.
        matched = golden[f"atss_cls_labels_img{image}"][positives] - 1
        gt = golden[f"gt_boxes_img{image}"][matched]
        anchors = golden["anchors"][positives]
        targets = coder.encode(gt, anchors)
        assert torch.equal(targets, golden[f"atss_reg_targets_pos_img{image}"])
        torch.testing.assert_close(coder.decode(targets, anchors), gt, atol=1e-3, rtol=0)
