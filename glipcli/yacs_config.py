"""Read an official GLIP YACS config (`.yaml`) into a `GLIPConfig`.

Only the settings that define the architecture, the preprocessing and the post-processing are
read; anything absent falls back to the GLIP-T preset. The BERT size is not part of the official
config (the official code reads it from the `bert-base-uncased` hub config): a `bert_config.json`
beside the YAML, or the `bert_config` argument, gives it for non-standard sizes.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any


from glipcli.config import (
    AnchorConfig,
    FPNConfig,
    GLIPConfig,
    HeadConfig,
    InputConfig,
    LanguageConfig,
    LossConfig,
    PostProcessConfig,
    SwinConfig,
    get_preset,
)
from glipcli.errors import GlipError, excerpt
from glipcli.io import read_json, read_yaml


def _get(tree: dict, dotted: str, default: Any = None) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return _decode(node)


def _decode(value: Any) -> Any:
    """YACS semantics: a string that is a Python literal is that literal. Official configs write
    tuples as `DEPTHS: (2, 2, 18, 2)`, which YAML reads as a string."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    return value


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) else value


_BERT_SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def _language_from_bert_json(path: Path, max_query_len: int) -> LanguageConfig:
    data = read_json(path, "BERT config")
    if not isinstance(data, dict) or not all(k in data for k in _BERT_SIZE_KEYS):
        raise GlipError(f"{path}: not a BERT config (needs {', '.join(_BERT_SIZE_KEYS)})")
    return LanguageConfig(
        hidden_size=data["hidden_size"],
        num_layers=data["num_hidden_layers"],
        num_heads=data["num_attention_heads"],
        intermediate_size=data["intermediate_size"],
        vocab_size=data.get("vocab_size", 30522),
        max_position_embeddings=data.get("max_position_embeddings", 512),
        type_vocab_size=data.get("type_vocab_size", 2),
        layer_norm_eps=data.get("layer_norm_eps", 1e-12),
        hidden_dropout=data.get("hidden_dropout_prob", 0.1),
        attention_dropout=data.get("attention_probs_dropout_prob", 0.1),
        max_query_len=max_query_len,
    )


def config_from_yacs(path: str | Path, bert_config: str | Path | None = None) -> GLIPConfig:
    """Build a `GLIPConfig` from an official YACS YAML file."""
    path = Path(path)
    if not path.exists():
        raise GlipError(f"{path}: no such config file")
    tree = read_yaml(path, "YAML config")
    if not isinstance(tree, dict) or "MODEL" not in tree:
        raise GlipError(f"{path}: not a GLIP config (no MODEL section)")
    try:
        return _config_from_tree(tree, path, bert_config)
    except (ValueError, TypeError) as exc:  # e.g. a list where a number belongs
        raise GlipError(f"{path}: invalid value in config ({str(exc).splitlines()[0][:200]})") from None


def _config_from_tree(tree: dict, path: Path, bert_config: str | Path | None) -> GLIPConfig:
    base = get_preset("glip-t")
    body = _get(tree, "MODEL.BACKBONE.CONV_BODY", "SWINT-FPN-RETINANET")
    if not str(body).startswith("SWINT-FPN"):
        raise GlipError(f"{path}: backbone {excerpt(body)} is not supported (only Swin + FPN GLIP models)")
    rpn = _get(tree, "MODEL.RPN_ARCHITECTURE", "VLDYHEAD")
    if rpn != "VLDYHEAD":
        raise GlipError(f"{path}: RPN_ARCHITECTURE {excerpt(rpn)} is not supported (only VLDYHEAD)")
    lang_type = _get(tree, "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE", "bert-base-uncased")
    if lang_type != "bert-base-uncased":
        raise GlipError(f"{path}: language model {excerpt(lang_type)} is not supported (only bert-base-uncased)")
    fuse_type = _get(tree, "MODEL.DYHEAD.FUSE_CONFIG.TYPE", "MHA-B")
    early = bool(_get(tree, "MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON", base.head.early_fusion))
    if early and fuse_type != "MHA-B":
        raise GlipError(f"{path}: fusion type {excerpt(fuse_type)} is not supported (only MHA-B)")

    s = base.swin
    swin = SwinConfig(
        embed_dim=int(_get(tree, "MODEL.SWINT.EMBED_DIM", s.embed_dim)),
        depths=tuple(_get(tree, "MODEL.SWINT.DEPTHS", s.depths)),
        num_heads=tuple(_get(tree, "MODEL.SWINT.NUM_HEADS", s.num_heads)),
        window_size=int(_get(tree, "MODEL.SWINT.WINDOW_SIZE", s.window_size)),
        mlp_ratio=float(_get(tree, "MODEL.SWINT.MLP_RATIO", s.mlp_ratio)),
        drop_path_rate=float(_get(tree, "MODEL.SWINT.DROP_PATH_RATE", s.drop_path_rate)),
    )
    out_channels = _get(tree, "MODEL.SWINT.OUT_CHANNELS")
    if out_channels is not None and tuple(out_channels) != swin.stage_channels:
        raise GlipError(f"{path}: SWINT.OUT_CHANNELS {tuple(out_channels)} does not follow EMBED_DIM "
                        f"{swin.embed_dim} (expected {swin.stage_channels})")
    fpn = FPNConfig(
        out_channels=int(_get(tree, "MODEL.BACKBONE.OUT_CHANNELS", base.fpn.out_channels)),
        drop_block_prob=float(_get(tree, "MODEL.FPN.DROP_PROB", base.fpn.drop_block_prob))
        if _get(tree, "MODEL.FPN.DROP_BLOCK", True) else 0.0,
        drop_block_size=int(_get(tree, "MODEL.FPN.DROP_SIZE", base.fpn.drop_block_size)),
    )

    max_query_len = int(_get(tree, "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN", 256))
    lang_dim = int(_get(tree, "MODEL.LANGUAGE_BACKBONE.LANG_DIM", 768))
    bert_json = Path(bert_config) if bert_config else path.with_name("bert_config.json")
    if bert_json.is_file():
        language = _language_from_bert_json(bert_json, max_query_len)
    elif lang_dim == 768:
        language = LanguageConfig(max_query_len=max_query_len)
    else:
        raise GlipError(f"{path}: LANG_DIM is {lang_dim}, not bert-base's 768; pass the BERT size "
                        "with a bert_config.json beside the YAML")
    if language.hidden_size != lang_dim:
        raise GlipError(f"{path}: LANG_DIM {lang_dim} differs from the BERT hidden size {language.hidden_size}")

    h = base.head
    channels = int(_get(tree, "MODEL.DYHEAD.CHANNELS", h.channels))
    if channels != fpn.out_channels:
        raise GlipError(f"{path}: DYHEAD.CHANNELS {channels} must equal BACKBONE.OUT_CHANNELS {fpn.out_channels}")
    head = HeadConfig(
        channels=channels,
        num_layers=int(_get(tree, "MODEL.DYHEAD.NUM_CONVS", h.num_layers)),
        early_fusion=early,
        fused_features_for_scoring=bool(
            _get(tree, "MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT", h.fused_features_for_scoring)),
        group_norm_groups=int(_get(tree, "MODEL.GROUP_NORM.NUM_GROUPS", h.group_norm_groups)),
        num_cls_logits=int(_get(tree, "MODEL.DYHEAD.NUM_CLASSES", h.num_cls_logits + 1)) - 1,
        prior_prob=float(_get(tree, "MODEL.DYHEAD.PRIOR_PROB", h.prior_prob)),
        log_scale_init=float(_get(tree, "MODEL.DYHEAD.LOG_SCALE", h.log_scale_init)),
    )
    anchors = AnchorConfig(
        sizes=tuple(int(x) for x in _get(tree, "MODEL.RPN.ANCHOR_SIZES", base.anchors.sizes)),
        strides=tuple(int(x) for x in _get(tree, "MODEL.RPN.ANCHOR_STRIDE", base.anchors.strides)),
    )
    aspect = _get(tree, "MODEL.RPN.ASPECT_RATIOS", [1.0])
    if list(aspect) != [1.0] or int(_get(tree, "MODEL.RPN.SCALES_PER_OCTAVE", 1)) != 1:
        raise GlipError(f"{path}: only one square anchor per location is supported")
    p = base.postprocess
    postprocess = PostProcessConfig(
        score_threshold=float(_get(tree, "MODEL.ATSS.INFERENCE_TH", p.score_threshold)),
        pre_nms_top_n=int(_get(tree, "MODEL.ATSS.PRE_NMS_TOP_N", p.pre_nms_top_n)),
        nms_threshold=float(_get(tree, "MODEL.ATSS.NMS_TH", p.nms_threshold)),
        max_detections=int(_get(tree, "MODEL.ATSS.DETECTIONS_PER_IMG", p.max_detections)),
    )
    i = base.input
    if not _get(tree, "INPUT.TO_BGR255", True):
        raise GlipError(f"{path}: only INPUT.TO_BGR255 = True (the GLIP Swin models) is supported")
    input_cfg = InputConfig(
        min_size=int(_first(_get(tree, "INPUT.MIN_SIZE_TEST", i.min_size))),
        max_size=int(_get(tree, "INPUT.MAX_SIZE_TEST", i.max_size)),
        pixel_mean=tuple(float(x) for x in _get(tree, "INPUT.PIXEL_MEAN", i.pixel_mean)),
        pixel_std=tuple(float(x) for x in _get(tree, "INPUT.PIXEL_STD", i.pixel_std)),
        size_divisible=int(_get(tree, "DATALOADER.SIZE_DIVISIBILITY", i.size_divisible)),
    )
    loss = LossConfig(
        atss_topk=int(_get(tree, "MODEL.ATSS.TOPK", base.loss.atss_topk)),
        focal_alpha=float(_get(tree, "MODEL.DYHEAD.FUSE_CONFIG.TOKEN_ALPHA", base.loss.focal_alpha)),
        focal_gamma=float(_get(tree, "MODEL.DYHEAD.FUSE_CONFIG.TOKEN_GAMMA", base.loss.focal_gamma)),
        reg_loss_weight=float(_get(tree, "MODEL.ATSS.REG_LOSS_WEIGHT", base.loss.reg_loss_weight)),
    )
    return GLIPConfig(name=path.stem, swin=swin, fpn=fpn, language=language, head=head,
                      anchors=anchors, postprocess=postprocess, input=input_cfg, loss=loss)
