"""Where a model comes from: a preset name, a checkpoint path, an official config — and which
architecture a checkpoint needs.

`resolve_model_source` turns what a user typed (`--model`, `--weights`, `--config`) into a
`ModelSource` (config + weights file); `load_model` builds the `GLIP` and loads the weights,
reading the checkpoint once. The architecture of a checkpoint given without a preset or config
is taken from our safetensors metadata, or else recognised from its tensor shapes (GLIP-T,
GLIP-T (A), GLIP-L).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import torch

from glipcli.checkpoint import (build_empty, config_from_metadata, is_official_state_dict, load_state_dict_checked,
                                read_state_dict)
from glipcli.checkpoint_fit import check_fits
from glipcli.config import GLIPConfig, get_preset
from glipcli.errors import GlipError
from glipcli.hub import download_weights, is_packaged, is_preset, packaged_weights
from glipcli.modeling.glip import GLIP
from glipcli.nano.minilm import MINILM_L6, load_minilm
from glipcli.yacs_config import config_from_yacs

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: its architecture (None: read it from the checkpoint) and weights file
    (None: random initialisation, only when a config object is given directly)."""

    config: GLIPConfig | None
    weights: Path | None


def looks_like_path(text: str) -> bool:
    """`--model` values that name a file rather than a preset."""
    return (Path(text).suffix.lower() in CHECKPOINT_SUFFIXES or "/" in text or "\\" in text
            or Path(text).exists())


def resolve_model_source(model: str | GLIPConfig | None = None, weights: str | Path | None = None,
                         config: str | Path | None = None, cache_dir: str | Path | None = None
                         ) -> ModelSource:
    """Combine `--model`, `--weights` and `--config` (precedence, first wins):

    - architecture: `config` (an official YACS file), a preset `model`, the checkpoint itself
      (our safetensors metadata, or recognised from its shapes);
    - weights: `weights`, a path given as `model`, the preset's official checkpoint from the hub
      or its packaged weights (`nano`) (`model` defaults to `glip-t` when nothing at all is given).
    """
    cfg: GLIPConfig | None = None
    preset: str | None = None
    if isinstance(model, GLIPConfig):
        cfg = model
    elif model is not None:
        if is_preset(model) or is_packaged(model):
            preset = model.lower()
        elif looks_like_path(model):
            if weights is not None:
                raise GlipError(f"--model {model} is a file and --weights {weights} another: give one of them")
            weights = model
        else:
            get_preset(model)  # raises: unknown preset, naming the known ones
    if config is not None:
        cfg = config_from_yacs(config)
    elif preset is not None:
        cfg = get_preset(preset)

    if weights is None:
        if isinstance(model, GLIPConfig):
            return ModelSource(cfg, None)
        if preset is None:
            if config is not None:
                raise GlipError("--config gives the architecture only: also pass --weights PATH "
                                "or a preset with --model")
            preset = "glip-t"
            cfg = get_preset(preset)
        weights = (packaged_weights(preset) if is_packaged(preset)
                   else download_weights(preset, cache_dir=cache_dir))
    weights = Path(weights)
    if not weights.is_file():
        raise GlipError(f"{weights}: no such checkpoint file")
    return ModelSource(cfg, weights)


def infer_config(state: dict[str, torch.Tensor], metadata: dict[str, str], source: str = "checkpoint"
                 ) -> GLIPConfig:
    """The architecture a checkpoint was saved from: our safetensors metadata if present, else
    the preset whose distinctive shapes it has (Swin width, fusion layers, head depth)."""
    cfg = config_from_metadata(metadata, source)
    if cfg is not None:
        return cfg
    official = is_official_state_dict(state)
    patch = state.get("backbone.body.patch_embed.proj.weight" if official
                      else "backbone.swin.patch_embed.proj.weight")
    if patch is None:
        raise GlipError(f"{source}: not a GLIP checkpoint with a Swin backbone; pass --config CFG.yaml")
    embed_dim = int(patch.shape[0])
    if official:
        fusion = any(".b_attn." in k for k in state)
        tower = {int(k.split(".")[3]) for k in state if k.startswith("rpn.head.dyhead_tower.")}
        layers = (max(tower) + 1) // 3 if fusion and tower else max(tower, default=-1) + 1
    else:
        fusion = any(k.startswith("head.layers.") and ".fusion." in k for k in state)
        layers = len({k.split(".")[2] for k in state if k.startswith("head.layers.")})
    for name in ("glip-t", "glip-t-a", "glip-l"):  # T (B) and T (C) share GLIP-T's architecture
        cfg = get_preset(name)
        if (cfg.swin.embed_dim, cfg.head.early_fusion, cfg.head.num_layers) == (embed_dim, fusion, layers):
            return cfg
    raise GlipError(f"{source}: the architecture (Swin width {embed_dim}, {layers} head layers, "
                    f"{'with' if fusion else 'without'} deep fusion) is not a preset; pass --config CFG.yaml")


def build_model(config: GLIPConfig | str) -> GLIP:
    """A randomly initialised `GLIP` of a config or a preset name."""
    return GLIP(get_preset(config) if isinstance(config, str) else config)


def load_model(source: ModelSource) -> GLIP:
    """Build the `GLIP` of `source` and load its weights (read once, checked by name and shape)."""
    if source.weights is None:
        if source.config is None:
            raise GlipError("no model given: pass a preset name (e.g. glip-t) or a checkpoint")
        return GLIP(source.config)
    state, metadata = read_state_dict(source.weights)
    cfg = source.config or infer_config(state, metadata, source=str(source.weights))
    own_layout = any(k.startswith(("backbone.swin.", "head.layers.")) for k in state)
    if source.config is None and config_from_metadata(metadata, str(source.weights)) is not None:
        # The architecture is the file's own claim: hold it against the tensors before building anything.
        check_fits(cfg, state, str(source.weights), optional_prefixes=("language.",))
    if own_layout and not any(k.startswith("language.") for k in state):
        return _load_without_text_encoder(cfg, state, str(source.weights))
    # Built without allocating or initialising parameters; the checkpoint's (memory-mapped)
    # tensors become the parameters, so loading costs one copy of the weights, not two.
    model = build_empty(cfg)
    load_state_dict_checked(model, state, source=str(source.weights), assign=True)
    return model


def _load_without_text_encoder(cfg: GLIPConfig, state: dict[str, torch.Tensor], source: str) -> GLIP:
    """A checkpoint that leaves the text encoder out (the packaged nano weights): all-MiniLM-L6-v2
    comes from its package, every other parameter from the file (missing keys must be exactly
    the `language.*` ones)."""
    if cfg.language != MINILM_L6:
        raise GlipError(f"{source}: holds no text-encoder weights, and its architecture's text encoder is not "
                        "all-MiniLM-L6-v2 (only models pre-trained on that encoder may leave it out)")
    model = GLIP(cfg)
    load_minilm(model)
    result = load_state_dict_checked(model, state, source=source, strict=False)
    other = [k for k in result["missing"] if not k.startswith("language.")]
    if other or result["unexpected"]:
        parts = ([f"missing {', '.join(other[:5])}" + (f" ... ({len(other)} in all)" if len(other) > 5 else "")]
                 if other else [])
        if result["unexpected"]:
            parts.append(f"unexpected {', '.join(result['unexpected'][:5])}")
        raise GlipError(f"{source}: checkpoint does not match the '{cfg.name}' architecture: " + "; ".join(parts))
    return model
