"""The model pre-training trains: built (or loaded), its text encoder frozen, its optimiser groups."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from glipcli.config import get_preset
from glipcli.engine.trainable import param_groups
from glipcli.errors import GlipError
from glipcli.modeling.glip import GLIP
from glipcli.nano.export import is_minilm
from glipcli.nano.minilm import MINILM_L6, PACKAGE, WEIGHTS_SHA256, load_minilm
from glipcli.nano.pretrain_config import PretrainConfig
from glipcli.weights import ModelSource, load_model


def build_pretrain_model(preset: str = "nano", init: str | Path | None = None, seed: int = 0
                         ) -> tuple[GLIP, dict[str, Any]]:
    """The model to pre-train and a description of its text encoder.

    Without `init`: the preset's architecture, randomly initialised (seeded), with the packaged
    all-MiniLM-L6-v2 as text encoder (the preset must have its sizes: `nano`). With `init`: a
    glip checkpoint (its architecture from the file; a nano export gets MiniLM from the package)."""
    if init is not None:
        path = Path(init)
        if not path.is_file():
            raise GlipError(f"{path}: no such checkpoint file")
        model = load_model(ModelSource(None, path))
        return model, {"kind": "checkpoint", "path": str(path.resolve()), "minilm": is_minilm(model)}
    cfg = get_preset(preset)
    if cfg.language != MINILM_L6:
        raise GlipError(f"pre-training needs a pre-trained text encoder: the {cfg.name} preset's is not "
                        "all-MiniLM-L6-v2 (use --preset nano, or --init a checkpoint to start from)")
    torch.manual_seed(seed)
    model = GLIP(cfg)
    files = load_minilm(model)
    return model, {"kind": "all-MiniLM-L6-v2", "package": PACKAGE, "version": files.version,
                   "sha256": WEIGHTS_SHA256, "minilm": True}


def disable_dropout(model: nn.Module) -> int:
    """Turn off every stochastic regulariser of `model` (dropout, DropPath, DropBlock, attention
    dropout) in place; returns how many were on. Pre-training on a stream that never repeats a
    sample gains nothing from them and they cost time; the model's config (what fine-tuning uses
    later) is unchanged."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
        for name in ("drop_prob", "dropout"):
            value = getattr(module, name, None)
            if isinstance(value, float) and not isinstance(module, nn.Dropout):
                changed += value > 0
                setattr(module, name, 0.0)
    return changed


def freeze_text_encoder(model: GLIP) -> None:
    model.language.eval()
    for p in model.language.parameters():
        p.requires_grad_(False)


def trainable_parameters(model: GLIP) -> list[tuple[str, nn.Parameter]]:
    """Everything but the text encoder and the unused `cls_logits` (GLIP scores with token logits)."""
    out = []
    for name, p in model.named_parameters():
        train = not name.startswith(("language.", "head.cls_logits."))
        p.requires_grad_(train)
        if train:
            out.append((name, p))
    return out


def optimizer_groups(named: list[tuple[str, nn.Parameter]], cfg: PretrainConfig) -> list[dict]:
    """The official `make_optimizer` groups (biases: lr x bias_lr_factor, bias_weight_decay)."""
    rules = SimpleNamespace(lr=cfg.lr, language_lr=cfg.lr, weight_decay=cfg.weight_decay,
                            bias_lr_factor=cfg.bias_lr_factor, bias_weight_decay=cfg.bias_weight_decay)
    groups = param_groups(named, rules)
    for group in groups:
        group["base_lr"] = group["lr"]
    return groups
