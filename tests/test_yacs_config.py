"""Reading official YACS configs (`.yaml`) into a GLIPConfig (golden tiny/reductions.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from glipcli.config import get_preset
from glipcli.errors import GlipError
from glipcli.yacs_config import config_from_yacs

ARCHITECTURE_FIELDS = ("swin", "fpn", "language", "head", "anchors")


def test_tiny_config_gives_the_reduced_sizes(golden_dir):
    cfg = config_from_yacs(golden_dir / "tiny" / "config.yaml")
    assert cfg.swin.embed_dim == 32
    assert cfg.swin.depths == (2, 2, 2, 2)
    assert cfg.swin.num_heads == (1, 2, 4, 8)
    assert cfg.swin.window_size == 7
    assert cfg.swin.stage_channels == (32, 64, 128, 256)
    assert cfg.fpn.out_channels == 64
    assert cfg.head.channels == 64
    assert cfg.head.num_layers == 2
    assert cfg.head.early_fusion is True
    assert cfg.head.fused_features_for_scoring is True
    assert cfg.head.num_cls_logits == 80
    assert cfg.head.group_norm_groups == 16
    # BERT size from the bert_config.json beside the YAML.
    assert cfg.language.hidden_size == 64
    assert cfg.language.num_layers == 2
    assert cfg.language.num_heads == 2
    assert cfg.language.intermediate_size == 256
    assert cfg.language.vocab_size == 30522
    assert cfg.language.max_query_len == 256
    assert cfg.input.min_size == 336
    assert cfg.input.max_size == 560
    assert cfg.input.size_divisible == 32
    assert cfg.postprocess.score_threshold == 0.05
    assert cfg.postprocess.pre_nms_top_n == 1000
    assert cfg.postprocess.nms_threshold == 0.6
    assert cfg.postprocess.max_detections == 100
    assert cfg.anchors.sizes == (64, 128, 256, 512, 1024)
    assert cfg.anchors.strides == (8, 16, 32, 64, 128)


def test_tiny_a_config_has_no_deep_fusion(golden_dir):
    cfg = config_from_yacs(golden_dir / "tiny_a" / "config.yaml")
    assert cfg.head.early_fusion is False
    assert cfg.head.fused_features_for_scoring is False
    tiny = config_from_yacs(golden_dir / "tiny" / "config.yaml")
    # Everything else is the same reduced model.
    assert cfg.swin == tiny.swin and cfg.fpn == tiny.fpn and cfg.language == tiny.language
    assert cfg.head.num_layers == tiny.head.num_layers and cfg.head.channels == tiny.head.channels


def test_bert_config_argument_overrides_the_sibling_file(golden_dir, tmp_path):
    yaml_path = tmp_path / "config.yaml"
    shutil.copy(golden_dir / "tiny" / "config.yaml", yaml_path)
    # No bert_config.json beside it and LANG_DIM 64: the BERT size must be given.
    with pytest.raises(GlipError):
        config_from_yacs(yaml_path)
    cfg = config_from_yacs(yaml_path, bert_config=golden_dir / "tiny" / "bert_config.json")
    assert cfg.language == config_from_yacs(golden_dir / "tiny" / "config.yaml").language


# Official config files write tuples as Python literals, which YAML reads as strings and YACS
# decodes with literal_eval; `cfg.dump()` writes YAML lists instead. Both must work.
GLIP_L_PARTIAL = """\
MODEL:
  SWINT:
    EMBED_DIM: 192
    DEPTHS: (2, 2, 18, 2)
    NUM_HEADS: (6, 12, 24, 48)
    WINDOW_SIZE: 12
    OUT_CHANNELS: (192, 384, 768, 1536)
    DROP_PATH_RATE: 0.4
  DYHEAD:
    NUM_CONVS: 8
"""


def _as_yaml_lists(text: str) -> str:
    return text.replace("(", "[").replace(")", "]")


@pytest.mark.parametrize("syntax", ["tuple-literal", "yaml-list"])
def test_partial_swin_l_yaml_matches_the_glip_l_preset(tmp_path, syntax):
    path = tmp_path / "glip_Swin_L.yaml"
    path.write_text(GLIP_L_PARTIAL if syntax == "tuple-literal" else _as_yaml_lists(GLIP_L_PARTIAL))
    cfg = config_from_yacs(path)
    preset = get_preset("glip-l")
    for name in ARCHITECTURE_FIELDS:
        assert getattr(cfg, name) == getattr(preset, name), name
    # And it is not simply the default: GLIP-T differs in the backbone and head depth.
    assert cfg.swin != get_preset("glip-t").swin
    assert cfg.head != get_preset("glip-t").head


def test_official_tuple_literals_in_rpn_and_input(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "MODEL:\n"
        "  BACKBONE:\n    CONV_BODY: \"SWINT-FPN-RETINANET\"\n"
        "  LANGUAGE_BACKBONE:\n    MODEL_TYPE: \"bert-base-uncased\"\n"
        "  RPN:\n"
        "    ANCHOR_SIZES: (32, 64, 128, 256, 512)\n"
        "    ANCHOR_STRIDE: (8, 16, 32, 64, 128)\n"
        "    ASPECT_RATIOS: (1.0,)\n"
        "    SCALES_PER_OCTAVE: 1\n"
        "INPUT:\n  MIN_SIZE_TEST: (640,)\n  MAX_SIZE_TEST: 1000\n"
        "DATASETS:\n  TRAIN: (\"object365_dt_train\", )\n")
    cfg = config_from_yacs(path)
    assert cfg.anchors.sizes == (32, 64, 128, 256, 512)
    assert cfg.anchors.strides == (8, 16, 32, 64, 128)
    assert cfg.input.min_size == 640 and cfg.input.max_size == 1000


def test_several_aspect_ratios_are_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("MODEL:\n  RPN:\n    ASPECT_RATIOS: (0.5, 1.0, 2.0)\n")
    with pytest.raises(GlipError, match="anchor"):
        config_from_yacs(path)


def test_full_tiny_yaml_and_minimal_yaml_agree_on_defaults(golden_dir, tmp_path):
    """A YAML with only MODEL gives the GLIP-T preset (official defaults) everywhere."""
    path = tmp_path / "minimal.yaml"
    path.write_text("MODEL:\n  META_ARCHITECTURE: GeneralizedVLRCNN\n")
    cfg = config_from_yacs(path)
    preset = get_preset("glip-t")
    for name in ARCHITECTURE_FIELDS + ("postprocess", "input", "loss"):
        assert getattr(cfg, name) == getattr(preset, name), name


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _expect_error(path: Path) -> str:
    with pytest.raises(GlipError) as excinfo:
        config_from_yacs(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "\n" not in message
    return message


def test_resnet_backbone_is_unsupported(tmp_path):
    path = _write(tmp_path, "MODEL:\n  BACKBONE:\n    CONV_BODY: R-50-FPN\n")
    assert "R-50-FPN" in _expect_error(path)


def test_roberta_language_model_is_unsupported(tmp_path):
    path = _write(tmp_path, "MODEL:\n  LANGUAGE_BACKBONE:\n    MODEL_TYPE: roberta-base\n    LANG_DIM: 768\n")
    assert "roberta-base" in _expect_error(path)


def test_lang_dim_without_bert_config_is_refused(tmp_path):
    path = _write(tmp_path, "MODEL:\n  LANGUAGE_BACKBONE:\n    LANG_DIM: 512\n")
    assert not (tmp_path / "bert_config.json").exists()
    message = _expect_error(path)
    assert "512" in message and "bert_config.json" in message


def test_malformed_yaml(tmp_path):
    path = _write(tmp_path, "MODEL:\n  SWINT: [1, 2\n    EMBED_DIM: : 3\n")
    _expect_error(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    assert "no such" in _expect_error(path)


def test_yaml_without_model_section(tmp_path):
    path = _write(tmp_path, "SOLVER:\n  BASE_LR: 0.0001\n")
    assert "MODEL" in _expect_error(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = _write(tmp_path, "- just\n- a list\n")
    _expect_error(path)


def test_wrongly_typed_value_is_a_glip_error(tmp_path):
    path = _write(tmp_path, "MODEL:\n  SWINT:\n    EMBED_DIM: [96, 192]\n")
    _expect_error(path)


def test_bert_config_without_sizes_is_a_glip_error(tmp_path):
    _write(tmp_path, '{"vocab_size": 30522}', name="bert_config.json")
    path = _write(tmp_path, "MODEL:\n  LANGUAGE_BACKBONE:\n    LANG_DIM: 64\n")
    with pytest.raises(GlipError) as excinfo:
        config_from_yacs(path)
    assert "bert_config.json" in str(excinfo.value) and "\n" not in str(excinfo.value)
