"""The opt-in compiled forward: its size buckets, and (slow) torch.compile on the CPU against eager."""

from __future__ import annotations

import pytest
import torch

from glipcli.config import InputConfig
from glipcli.modeling.compiled import CompiledGLIP, bucket_edges, bucket_side, pad_images
from glipcli.modeling.language import TextFeatures
from glipcli.predictor import GLIPPredictor
from golden_utils import golden_model, load
from test_model_parity import _assert_same_detections, _prompt


def test_bucket_edges_keep_the_preset_sizes_unpadded():
    edges = bucket_edges(InputConfig(min_size=800, max_size=1333, size_divisible=32))
    assert edges == [128, 256, 384, 512, 640, 768, 800, 896, 1024, 1152, 1280, 1344]
    assert bucket_side(800, edges) == 800  # the short side of every official test image
    assert bucket_side(1216, edges) == 1280 and bucket_side(1344, edges) == 1344
    assert bucket_side(801, edges) == 896 and bucket_side(1, edges) == 128
    assert bucket_side(1400, edges) == 1408  # beyond the preset: multiples of the step
    assert bucket_edges(InputConfig(min_size=160, max_size=256), step=64) == [64, 128, 160, 192, 256]


def test_pad_images_pads_bottom_right_with_zeros():
    images = torch.randn(2, 3, 5, 7)
    padded = pad_images(images, 8, 9)
    assert padded.shape == (2, 3, 8, 9)
    assert torch.equal(padded[..., :5, :7], images)
    assert padded[..., 5:, :].abs().sum() == 0 and padded[..., :, 7:].abs().sum() == 0
    assert pad_images(images, 5, 7) is images


def test_text_stack_pads_with_masked_zeros():
    a = TextFeatures(torch.ones(1, 3, 4), torch.ones(1, 3, 4), torch.ones(1, 3, dtype=torch.long), torch.ones(1, 4))
    b = TextFeatures(2 * torch.ones(1, 5, 4), torch.ones(1, 5, 4), torch.ones(1, 5, dtype=torch.long),
                     torch.ones(1, 4))
    both = TextFeatures.stack([a, b])
    assert both.hidden.shape == (2, 5, 4) and both.mask.tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert both.hidden[0, 3:].abs().sum() == 0 and torch.equal(both.hidden[1], b.hidden[0])
    assert TextFeatures.stack([a], length=8).mask.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="does not fit"):
        TextFeatures.stack([b], length=4)


def test_compile_mode_is_checked(golden_dir):
    model = golden_model(str(golden_dir / "tiny"))
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        CompiledGLIP(model, mode="fast")
    compiled = CompiledGLIP(model, mode="default")
    assert compiled.text_length(9) == 32 and compiled.text_length(250) == 256 and compiled.text_length(256) == 256


@pytest.mark.slow
def test_compiled_forward_on_the_cpu_gives_the_golden_detections(golden_dir):
    """torch.compile (inductor, C++ on the CPU) of backbone + head, buckets every 32 pixels so
    the golden image is not padded further, the caption padded to 32 tokens: the official
    detections."""
    model = golden_model(str(golden_dir / "tiny"))
    predictor = GLIPPredictor(model)
    predictor.compiled = CompiledGLIP(model, mode="default", step=32)
    inputs = load(str(golden_dir / "tiny" / "inputs.safetensors"))
    ref = load(str(golden_dir / "tiny" / "outputs_det.safetensors"))
    image_hw = tuple(inputs["image_size_hw"].tolist())
    for _ in range(2):
        (dets,) = predictor.detect_tensor(inputs["image_tensor"], [image_hw], _prompt(golden_dir, "tiny", "det"))
        _assert_same_detections(dets.boxes, dets.scores, dets.labels,
                                ref["final_boxes_resized"], ref["final_scores"], ref["final_labels"])
