"""Typed model configuration with named presets for the official GLIP variants.

A `GLIPConfig` is a small tree of frozen dataclasses, one per architectural part. Presets
(`glip-t`, `glip-t-a`, ...) are plain instances; variations are made with
`dataclasses.replace`. Official YACS configs are *read* into this structure by
`glipcli.yacs_config`, never mirrored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from glipcli.errors import GlipError, clip


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer image backbone (detection variant: any input size, padded windows)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    patch_size: int = 4
    drop_path_rate: float = 0.2

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclass(frozen=True)
class FPNConfig:
    """Feature pyramid over Swin stages 3-5, plus P6/P7 computed from P5."""

    out_channels: int = 256
    drop_block_prob: float = 0.3  # training only (official MODEL.FPN.DROP_BLOCK)
    drop_block_size: int = 3


@dataclass(frozen=True)
class LanguageConfig:
    """BERT text encoder; also sizes the BERT layers inside the fusion head."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    max_query_len: int = 256
    tokenizer: str = "bert-base-uncased"


@dataclass(frozen=True)
class HeadConfig:
    """VLDyHead: per layer X-MHA fusion -> BERT layer -> DyConv; then the grounding head."""

    channels: int = 256
    num_layers: int = 6
    early_fusion: bool = True  # X-MHA + head BERT layers (False for GLIP-T (A))
    fused_features_for_scoring: bool = True  # score with the head's final text features
    fusion_embed_dim: int = 2048
    fusion_heads: int = 8
    fusion_dropout: float = 0.1
    group_norm_groups: int = 16
    num_cls_logits: int = 80  # unused for scoring, kept for checkpoint compatibility
    prior_prob: float = 0.01
    log_scale_init: float = 0.0
    clamp_value: float = 50000.0


@dataclass(frozen=True)
class AnchorConfig:
    """One square anchor per location and level (ATSS)."""

    sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class PostProcessConfig:
    """ATSS post-processing thresholds (official MODEL.ATSS.*)."""

    score_threshold: float = 0.05
    pre_nms_top_n: int = 1000
    nms_threshold: float = 0.6
    max_detections: int = 100
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)


@dataclass(frozen=True)
class InputConfig:
    """Test-time preprocessing: resize, BGR 0-255 normalisation, pad."""

    min_size: int = 800
    max_size: int = 1333
    pixel_mean: tuple[float, float, float] = (103.53, 116.28, 123.675)  # BGR
    pixel_std: tuple[float, float, float] = (57.375, 57.12, 58.395)  # BGR
    size_divisible: int = 32


@dataclass(frozen=True)
class LossConfig:
    """ATSS assignment + token focal loss + GIoU + centerness (official defaults)."""

    atss_topk: int = 9
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_loss_weight: float = 2.0


@dataclass(frozen=True)
class GLIPConfig:
    name: str = "glip-t"
    swin: SwinConfig = field(default_factory=SwinConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)
    input: InputConfig = field(default_factory=InputConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def replace(self, **changes) -> "GLIPConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples become lists, keys sorted): what checkpoints and run folders store."""
        return _json_ready(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GLIPConfig":
        """The config `to_dict` gave (lists become tuples again); GlipError (one line) for anything
        else: not a mapping, missing or unknown fields, values of the wrong shape."""
        try:
            parts = {f.name: _part(f.type, data[f.name]) for f in dataclasses.fields(cls) if f.name != "name"}
            return cls(name=str(data["name"]), **parts)
        except KeyError as exc:
            raise GlipError(f"not a GLIP model config (missing {clip(repr(exc.args[0]), 80)})") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise GlipError(f"not a GLIP model config ({type(exc).__name__}: {clip(exc, 120)})") from None


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


_PARTS = {cls.__name__: cls for cls in (SwinConfig, FPNConfig, LanguageConfig, HeadConfig, AnchorConfig,
                                        PostProcessConfig, InputConfig, LossConfig)}


def _part(type_name: str, values: Mapping[str, Any]):
    """One part of a GLIPConfig from its dict (field types are strings: `from __future__ import annotations`)."""
    return _PARTS[type_name](**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


_GLIP_T = GLIPConfig(name="glip-t")
_GLIP_T_A = GLIPConfig(
    name="glip-t-a",
    head=HeadConfig(early_fusion=False, fused_features_for_scoring=False),
)
_GLIP_L = GLIPConfig(
    name="glip-l",
    swin=SwinConfig(
        embed_dim=192,
        depths=(2, 2, 18, 2),
        num_heads=(6, 12, 24, 48),
        window_size=12,
        drop_path_rate=0.4,
    ),
    head=HeadConfig(num_layers=8),
)

_NANO = GLIPConfig(
    name="nano",
    swin=SwinConfig(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=7,
                    drop_path_rate=0.1),
    fpn=FPNConfig(out_channels=64, drop_block_prob=0.0),
    language=LanguageConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
    head=HeadConfig(channels=64, num_layers=2, fusion_embed_dim=512, fusion_heads=8),
    input=InputConfig(min_size=256, max_size=384),
)

PRESETS: dict[str, GLIPConfig] = {
    "glip-t": _GLIP_T,
    "glip-t-a": _GLIP_T_A,
    # T(B) and T(C) share GLIP-T's architecture; only their pre-training data differ.
    "glip-t-b": _GLIP_T.replace(name="glip-t-b"),
    "glip-t-c": _GLIP_T.replace(name="glip-t-c"),
    "glip-l": _GLIP_L,
    # Small GLIP for offline use: Swin (32 wide) + FPN 64, 2 fusion layers, all-MiniLM-L6-v2 text encoder.
    "nano": _NANO,
}


def get_preset(name: str) -> GLIPConfig:
    """Return the named preset config (`glip-t`, `glip-t-a`, `glip-t-b`, `glip-t-c`, `glip-l`, `nano`)."""
    key = name.lower()
    if key not in PRESETS:
        raise GlipError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[key]
