"""End-to-end parity of the whole model with the official implementation: from the golden
preprocessed image and tokens through every stage to the final detections (golden README §4, §6,
§10), for the reduced GLIP-T (`tiny`) and GLIP-T (A) (`tiny_a`)."""

from __future__ import annotations

import pytest
import torch

from glipcli.modeling.postprocess import phrase_scores, rescale_boxes
from glipcli.predictor import GLIPPredictor
from glipcli.prompts.caption import Phrase
from glipcli.prompts.encoding import encode_prompt
from golden_utils import CASES, LEVELS, golden_model, load, max_abs_diff

ATOL = 1e-4
BOX_ATOL = 1e-3


def _prompt(golden_dir, variant, case):
    import json

    info = json.loads((golden_dir / variant / "prompts.json").read_text())[case]
    phrases = [Phrase(text, *span[0]) for text, span in zip(info["phrases"], info["tokens_positive"])]
    return encode_prompt(info["caption"], phrases)


def _sorted_dets(boxes, scores, labels):
    order = torch.argsort(scores, descending=True, stable=True)
    return boxes[order], scores[order], labels[order]


def _assert_same_detections(boxes, scores, labels, ref_boxes, ref_scores, ref_labels):
    assert boxes.shape == ref_boxes.shape
    b, s, l = _sorted_dets(boxes, scores, labels)
    rb, rs, rl = _sorted_dets(ref_boxes, ref_scores, ref_labels)
    assert max_abs_diff(s, rs) < 1e-5
    # Near-tied scores may swap places: match each detection to a reference one of the same label.
    used = torch.zeros(len(rb), dtype=torch.bool)
    for box, score, label in zip(b, s, l):
        candidates = (~used) & (rl == label) & ((rs - score).abs() < 1e-5)
        dist = (rb - box).abs().amax(dim=1).masked_fill(~candidates, float("inf"))
        j = int(dist.argmin())
        assert dist[j] < BOX_ATOL, (box, label, score)
        used[j] = True


@pytest.mark.parametrize("variant", ["tiny", "tiny_a"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_official(golden_dir, variant, case):
    model = golden_model(str(golden_dir / variant))
    inputs = load(str(golden_dir / "tiny" / "inputs.safetensors"))
    ref = load(str(golden_dir / variant / f"outputs_{case}.safetensors"))
    ref_visual = ref if variant == "tiny" else load(str(golden_dir / "tiny_a" / "outputs_visual_head.safetensors"))
    backbone_ref = load(str(golden_dir / "tiny" / "outputs_visual_backbone.safetensors"))
    prompt = _prompt(golden_dir, variant, case)
    assert torch.equal(prompt.input_ids, inputs[f"{case}/input_ids"])

    stages = {}
    hook = model.backbone.swin.register_forward_hook(lambda m, i, o: stages.setdefault("swin", o))
    try:
        with torch.inference_mode():
            text = model.encode_text(prompt.input_ids, prompt.attention_mask)
            out = model(inputs["image_tensor"], text)
    finally:
        hook.remove()

    for i, stage in enumerate(stages["swin"]):
        assert max_abs_diff(stage, backbone_ref[f"swin_stage{i + 2}"]) < ATOL
    for l, lv in enumerate(LEVELS):
        assert max_abs_diff(out.features[l], backbone_ref[f"fpn_{lv}"]) < ATOL
        assert torch.equal(out.anchors[l], backbone_ref[f"anchors_{lv}"])
        assert max_abs_diff(out.head.token_logits[l][..., :32], ref[f"dot_product_logits_{lv}"]) < ATOL
        assert max_abs_diff(out.head.box_regression[l], ref_visual[f"bbox_reg_{lv}"]) < ATOL
        assert max_abs_diff(out.head.centerness[l], ref_visual[f"centerness_{lv}"]) < ATOL
        assert max_abs_diff(phrase_scores(out.head.token_logits[l], prompt.token_spans),
                            ref[f"phrase_scores_{lv}"]) < 1e-5
    assert max_abs_diff(text.hidden, ref["lang_hidden"]) < ATOL

    predictor = GLIPPredictor(model)
    image_hw = tuple(inputs["image_size_hw"].tolist())
    (dets,) = predictor.detect_tensor(inputs["image_tensor"], [image_hw], prompt)
    _assert_same_detections(dets.boxes, dets.scores, dets.labels,
                            ref["final_boxes_resized"], ref["final_scores"], ref["final_labels"])
    original = rescale_boxes(dets.boxes, image_hw, tuple(inputs["original_size_hw"].tolist()))
    _assert_same_detections(original, dets.scores, dets.labels,
                            ref["final_boxes_original"], ref["final_scores"], ref["final_labels"])


@pytest.mark.parametrize("variant", ["tiny", "tiny_a"])
def test_predict_from_image_file(golden_dir, variant):
    """The public API from the PNG file: preprocessing + model + post-processing + rescaling."""
    predictor = GLIPPredictor(golden_model(str(golden_dir / variant)))
    ref = load(str(golden_dir / variant / "outputs_det.safetensors"))
    (result,) = predictor.predict(golden_dir / "tiny" / "image.png", "person. bicycle. car. dog")
    assert result.caption == "person. bicycle. car. dog"
    assert (result.width, result.height) == (600, 400)
    assert len(result.detections) == len(ref["final_scores"])
    scores = torch.tensor([d.score for d in result.detections])
    assert torch.all(scores[:-1] >= scores[1:])
    boxes = torch.tensor([d.box_xyxy for d in result.detections])
    labels = torch.tensor([d.phrase_index + 1 for d in result.detections])
    _assert_same_detections(boxes, scores, labels,
                            ref["final_boxes_original"], ref["final_scores"], ref["final_labels"])
    names = ["person", "bicycle", "car", "dog"]
    assert all(d.label == names[d.phrase_index] for d in result.detections)
