"""`glip convert`: an official training checkpoint -> a slim, safe glip `.safetensors` file.

The official `.pth` files carry the DDP-prefixed model state (and sometimes optimizer state) in a
pickle. The converted file holds the model weights only, under our parameter names, in
safetensors (no code can run when it is read), with the model config in its metadata, so it
loads without `--model`/`--config`. Parameters are checked by name and shape on the way, exactly
as when loading. The model is built on the `meta` device: converting GLIP-L needs no memory
for a second copy of the weights.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from glipcli.checkpoint import (convert_official_state_dict, is_official_state_dict, load_state_dict_checked,
                                read_state_dict, save_safetensors)
from glipcli.config import GLIPConfig, get_preset
from glipcli.device import resolve_dtype
from glipcli.errors import GlipError
from glipcli.modeling.glip import GLIP
from glipcli.outputs import OutputGuard
from glipcli.weights import infer_config
from glipcli.yacs_config import config_from_yacs


@dataclass
class ConversionReport:
    source: Path
    target: Path
    config_name: str
    tensors: int
    source_bytes: int
    target_bytes: int

    @property
    def ratio(self) -> float:
        """target size / source size."""
        return self.target_bytes / self.source_bytes if self.source_bytes else float("nan")


def convert_checkpoint(source: str | Path, target: str | Path, model: str | None = None,
                       config: str | Path | None = None, dtype: str | torch.dtype | None = None,
                       overwrite: bool = False) -> ConversionReport:
    """Convert `source` (official `.pth` or a glip `.safetensors`) into `target` (`.safetensors`).

    model: a preset naming the architecture, or config: an official YACS file; neither -> taken
    from the checkpoint (our metadata, or recognised from its shapes). dtype: store floating
    tensors as float16/bfloat16 (default: as they are in float32). Refuses to replace `target`
    unless `overwrite`."""
    source, target = Path(source), Path(target)
    if target.suffix != ".safetensors":
        raise GlipError(f"{target}: the output must be a .safetensors file")
    if source.exists() and target.exists() and source.resolve() == target.resolve():
        raise GlipError(f"{target}: the output would replace the input")
    OutputGuard(overwrite=overwrite, inputs=[source, config]).file(target, "TARGET")
    store_dtype = None if dtype is None else resolve_dtype(dtype)
    if model is not None and config is not None:
        raise GlipError("give --model or --config, not both")

    state, metadata = read_state_dict(source)
    if config is not None:
        cfg: GLIPConfig = config_from_yacs(config)
    elif model is not None:
        cfg = get_preset(model)
    else:
        cfg = infer_config(state, metadata, source=str(source))

    with torch.device("meta"):
        glip = GLIP(cfg)
    names = set(glip.state_dict())
    checked = dict(state)
    with warnings.catch_warnings():  # copying into meta tensors is a (warned) no-op: only checking here
        warnings.simplefilter("ignore")
        load_state_dict_checked(glip, checked, source=str(source))
    mapped = _mapped_state(state, cfg)
    glip.load_state_dict({k: v for k, v in mapped.items() if k in names}, strict=False, assign=True)
    save_safetensors(glip, target, dtype=store_dtype,
                     extra_metadata={"converted_from": source.name})
    stored = sum(1 for k in mapped if k in names)
    return ConversionReport(source, target, cfg.name, stored, source.stat().st_size, target.stat().st_size)


def _mapped_state(state: dict[str, torch.Tensor], cfg: GLIPConfig) -> dict[str, torch.Tensor]:
    """`state` under our parameter names (official checkpoints are mapped, ours kept)."""
    if is_official_state_dict(state):
        mapped, _ = convert_official_state_dict(state, cfg)
        return mapped
    return dict(state)
