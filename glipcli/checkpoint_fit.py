"""Checking a checkpoint's declared architecture against its tensors before any model is built.

Our `.safetensors` files carry their `GLIPConfig` as JSON metadata, and that config decides what
is built. A crafted or damaged file may declare an architecture far larger than its tensors (a
3 KB file saying `embed_dim: 4096` would otherwise make glip allocate gigabytes): the config is
first bounded (`check_declared_config`), then the model is built on the meta device (no memory,
no initialisation) and every tensor's shape compared with it (`check_fits`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from glipcli.checkpoint import _DERIVED_KEYS
from glipcli.config import GLIPConfig
from glipcli.errors import GlipError, clip
from glipcli.modeling.glip import GLIP

MAX_CONFIG_INT = 1 << 20  # no size, count or length of a GLIP architecture comes near it
MAX_DECLARED_LAYERS = 512  # Swin blocks + head layers + text-encoder layers (GLIP-L: 44)
MAX_LIST_ITEMS = 16


def check_declared_config(cfg: GLIPConfig, source: str) -> None:
    """Bound every number of a declared config, so building even its empty skeleton is cheap."""
    def walk(value, where: str) -> None:
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{where}.{f.name}" if where else f.name)
        elif isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST_ITEMS:
                raise GlipError(f"{source}: declared architecture: {where} has {len(value)} entries")
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            return
        elif isinstance(value, (int, float)):
            if not abs(value) <= MAX_CONFIG_INT:  # NaN fails this too
                raise GlipError(f"{source}: declared architecture: {where} = {clip(str(value), 40)} is out of range")
        else:
            raise GlipError(f"{source}: declared architecture: {where} has an unexpected {type(value).__name__}")

    walk(cfg, "")
    try:
        layers = sum(cfg.swin.depths) + cfg.head.num_layers + cfg.language.num_layers
    except TypeError:
        raise GlipError(f"{source}: declared architecture: layer counts are not numbers") from None
    if layers > MAX_DECLARED_LAYERS:
        raise GlipError(f"{source}: declared architecture has {layers} layers (at most {MAX_DECLARED_LAYERS})")


def expected_shapes(cfg: GLIPConfig, source: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every entry of the state dict of `GLIP(cfg)`, from a model built on the
    meta device (nothing allocated)."""
    check_declared_config(cfg, source)
    try:
        with torch.device("meta"):
            model = GLIP(cfg)
    except GlipError:
        raise
    except Exception as exc:  # a config whose numbers do not make a model (heads not dividing a width, ...)
        raise GlipError(f"{source}: the declared architecture cannot be built ({clip(exc)})") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_fits(cfg: GLIPConfig, state: Mapping[str, torch.Tensor], source: str,
               optional_prefixes: tuple[str, ...] = ()) -> None:
    """Raise a one-line GlipError unless every tensor of `state` (our parameter names) has the
    shape `cfg` gives it and no parameter of `cfg` is missing (except under
    `optional_prefixes`, e.g. `language.` for a file that leaves the text encoder out)."""
    shapes = expected_shapes(cfg, source)
    mismatched = [f"{k} (file {tuple(v.shape)}, declared {shapes[k]})" for k, v in state.items()
                  if k in shapes and tuple(v.shape) != shapes[k]]
    if mismatched:
        more = f", ... ({len(mismatched)} in all)" if len(mismatched) > 3 else ""
        raise GlipError(f"{source}: its tensors do not fit its declared architecture '{clip(cfg.name, 40)}': "
                        + ", ".join(mismatched[:3]) + more)
    missing = [k for k in shapes if k not in state and not k.startswith(optional_prefixes)
               and not any(p.match(k) for p in _DERIVED_KEYS)]
    if missing:
        more = f", ... ({len(missing)} in all)" if len(missing) > 3 else ""
        raise GlipError(f"{source}: checkpoint does not match its declared architecture '{clip(cfg.name, 40)}': "
                        "missing " + ", ".join(missing[:3]) + more)
