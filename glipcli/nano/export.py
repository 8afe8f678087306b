"""Weights out of pre-training: the final model of a run and the file glip ships (`--model nano`):
every parameter but the text encoder, which then comes from the packaged all-MiniLM-L6-v2.

    export_weights(model, "glipcli/assets/glip_nano.safetensors")   # float16, without language.*
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from glipcli.checkpoint import config_metadata, save_safetensors
from glipcli.errors import GlipError
from glipcli.io import atomic_write
from glipcli.modeling.glip import GLIP
from glipcli.nano.minilm import (MINILM_L6, PACKAGE, PACKAGE_VERSION, WEIGHTS_SHA256, check_files, locate_minilm,
                                 minilm_available, minilm_state_dict, without_text_encoder)

EXPORT_LIMIT_BYTES = 15_000_000


def is_minilm(model: GLIP) -> bool:
    """Whether the model's text encoder holds exactly the packaged all-MiniLM-L6-v2 weights."""
    if model.cfg.language != MINILM_L6 or not minilm_available():
        return False
    files = locate_minilm()
    check_files(files)
    reference = minilm_state_dict(files)
    own = model.language.bert.state_dict()
    weights = {k: v for k, v in reference.items() if k in own or not k.startswith("embeddings.")}
    return bool(weights) and all(k in own and torch.equal(own[k].detach().cpu().to(v.dtype), v)
                                 for k, v in weights.items())


def own_state(model: GLIP, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's weights without the text encoder (`language.*`), floats cast to `dtype`."""
    out = {}
    for key, value in without_text_encoder(model.state_dict()).items():
        value = value.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous().cpu()
    return out


def _metadata(model: GLIP, extra: dict[str, str] | None) -> dict[str, str]:
    return {**config_metadata(model.cfg),
            "text_encoder": json.dumps({"package": PACKAGE, "version": PACKAGE_VERSION, "sha256": WEIGHTS_SHA256}),
            **(extra or {})}


def save_final_weights(model: GLIP, path: Path, minilm: bool, extra: dict[str, str] | None = None) -> Path:
    """float32 weights: without the text encoder when it is the packaged MiniLM, else complete."""
    if not minilm:
        return save_safetensors(model, path, extra_metadata=extra)
    tensors, metadata = own_state(model), _metadata(model, extra)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def export_weights(model: GLIP, path: str | Path, dtype: torch.dtype = torch.float16,
                   extra_metadata: dict[str, str] | None = None, max_bytes: int | None = EXPORT_LIMIT_BYTES) -> Path:
    """Write the weights glip ships for a model pre-trained on top of the packaged MiniLM: every
    parameter but `language.*`, floats in `dtype`, config and text-encoder release in the metadata.
    Loads with `glipcli.weights.load_model` (the text encoder then comes from the package).

    GlipError when the model's text encoder is not exactly the packaged all-MiniLM-L6-v2 (the file
    could not be completed on loading) or the file would exceed `max_bytes`."""
    if not is_minilm(model):
        raise GlipError("only a model whose text encoder is the packaged all-MiniLM-L6-v2 (unchanged) can be "
                        "exported without it")
    tensors = own_state(model, dtype)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_bytes is not None and size > max_bytes:
        raise GlipError(f"the exported weights would take {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit")
    path = Path(path)
    metadata = _metadata(model, extra_metadata)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path
