"""Layer-by-layer parity of the language backbone, fusion, head BERT layers, DyConv and the
grounding head with the official implementation (golden README §4, §7, §10; atol 1e-4)."""

from __future__ import annotations

import pytest
import torch

from golden_utils import CASES, LEVELS, golden_model, load, max_abs_diff

ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny(golden_dir):
    return golden_model(str(golden_dir / "tiny"))


@pytest.fixture(scope="module")
def tiny_a(golden_dir):
    return golden_model(str(golden_dir / "tiny_a"))


def _inputs(golden_dir, case):
    inputs = load(str(golden_dir / "tiny" / "inputs.safetensors"))
    return inputs[f"{case}/input_ids"], inputs[f"{case}/attention_mask"]


@pytest.mark.parametrize("case", CASES)
def test_language_backbone(tiny, golden_dir, case):
    ref = load(str(golden_dir / "tiny" / f"outputs_{case}.safetensors"))
    ids, mask = _inputs(golden_dir, case)
    with torch.inference_mode():
        text = tiny.encode_text(ids, mask)
    assert max_abs_diff(text.hidden, ref["lang_hidden"]) < ATOL
    assert max_abs_diff(text.embedded, ref["lang_embedded"]) < ATOL
    assert max_abs_diff(text.aggregate, ref["lang_aggregate"]) < ATOL
    assert torch.equal(text.mask, ref["lang_masks"])


@pytest.mark.parametrize("case", CASES)
def test_each_tower_layer_matches(tiny, golden_dir, case):
    """Feed each stage the golden input of that stage, so an error is located precisely."""
    ref = load(str(golden_dir / "tiny" / f"outputs_{case}.safetensors"))
    backbone = load(str(golden_dir / "tiny" / "outputs_visual_backbone.safetensors"))
    mask = ref["lang_masks"]
    visual = [backbone[f"fpn_{lv}"] for lv in LEVELS]
    hidden = ref["lang_hidden"]
    with torch.inference_mode():
        for i, layer in enumerate(tiny.head.layers):
            fused_v, fused_l = layer.fusion(visual, hidden, mask)
            for lv, out in zip(LEVELS, fused_v):
                assert max_abs_diff(out, ref[f"layer{i}_fusion_visual_{lv}"]) < ATOL, (i, lv)
            assert max_abs_diff(fused_l, ref[f"layer{i}_fusion_lang_hidden"]) < ATOL
            text_out = layer.text_layer(ref[f"layer{i}_fusion_lang_hidden"], mask)
            assert max_abs_diff(text_out, ref[f"layer{i}_bertlayer_lang_hidden"]) < ATOL
            dy = layer.dyconv([ref[f"layer{i}_fusion_visual_{lv}"] for lv in LEVELS])
            for lv, out in zip(LEVELS, dy):
                assert max_abs_diff(out, ref[f"layer{i}_dyconv_visual_{lv}"]) < ATOL, (i, lv)
            visual = [ref[f"layer{i}_dyconv_visual_{lv}"] for lv in LEVELS]
            hidden = ref[f"layer{i}_bertlayer_lang_hidden"]


@pytest.mark.parametrize("case", CASES)
def test_full_head_outputs(tiny, golden_dir, case):
    """The whole head from the golden FPN maps and language features."""
    ref = load(str(golden_dir / "tiny" / f"outputs_{case}.safetensors"))
    backbone = load(str(golden_dir / "tiny" / "outputs_visual_backbone.safetensors"))
    from glipcli.modeling.language import TextFeatures

    text = TextFeatures(ref["lang_hidden"], ref["lang_embedded"], ref["lang_masks"], ref["lang_aggregate"])
    with torch.inference_mode():
        out = tiny.head([backbone[f"fpn_{lv}"] for lv in LEVELS], text)
        for l, lv in enumerate(LEVELS):
            assert max_abs_diff(out.token_logits[l][..., :32], ref[f"dot_product_logits_{lv}"]) < ATOL
            assert max_abs_diff(out.box_regression[l], ref[f"bbox_reg_{lv}"]) < ATOL
            assert max_abs_diff(out.centerness[l], ref[f"centerness_{lv}"]) < ATOL
            cls = tiny.head.cls_logits(out.visual[l])
            assert max_abs_diff(cls, ref[f"cls_logits_{lv}"]) < ATOL


@pytest.mark.parametrize("case", CASES)
def test_glip_t_a_head(tiny_a, golden_dir, case):
    """GLIP-T (A): no fusion; DyConv straight on the FPN maps; scoring with `embedded`."""
    ref = load(str(golden_dir / "tiny_a" / f"outputs_{case}.safetensors"))
    vis = load(str(golden_dir / "tiny_a" / "outputs_visual_head.safetensors"))
    backbone = load(str(golden_dir / "tiny" / "outputs_visual_backbone.safetensors"))
    assert all(layer.fusion is None and layer.text_layer is None for layer in tiny_a.head.layers)
    from glipcli.modeling.language import TextFeatures

    text = TextFeatures(ref["lang_hidden"], ref["lang_embedded"], ref["lang_masks"], ref["lang_aggregate"])
    with torch.inference_mode():
        out = tiny_a.head([backbone[f"fpn_{lv}"] for lv in LEVELS], text)
        for l, lv in enumerate(LEVELS):
            assert max_abs_diff(out.visual[l], vis[f"layer1_dyconv_visual_{lv}"]) < ATOL
            assert max_abs_diff(out.token_logits[l][..., :32], ref[f"dot_product_logits_{lv}"]) < ATOL
            assert max_abs_diff(out.box_regression[l], vis[f"bbox_reg_{lv}"]) < ATOL
            assert max_abs_diff(out.centerness[l], vis[f"centerness_{lv}"]) < ATOL
