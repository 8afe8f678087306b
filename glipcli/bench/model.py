"""The model a benchmark runs: what the user chose (`--model`, `--weights`, `--config`, device, dtype),
its label in result files, whether the paper has numbers for it, and loading it.

    choice = BenchModel(model="glip-t")            # official GLIP-T weights from the hub
    choice.label, choice.paper_model                # "glip-t", "glip-t"
    glip = choice.load()                            # a GLIP on the CPU

The paper's numbers are printed beside ours only for an official preset with its official
weights: a preset alone (the hub checkpoint), or a preset / no `--model` with `--weights` whose
file name is that preset's official checkpoint name (`glip_tiny_model_o365_goldg_cc_sbu.pth`, the
file `glip convert` or a manual download keeps). A `--config` or any other checkpoint is not an
official preset, whatever its architecture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glipcli.device import resolve_device, resolve_dtype
from glipcli.hub import HUB_CHECKPOINTS, is_packaged, is_preset
from glipcli.weights import load_model, resolve_model_source

DEFAULT_PRESET = "glip-t"


@dataclass
class BenchModel:
    """model: a preset or a checkpoint path (None: `glip-t`, unless `weights` is given); weights,
    config: as `glip detect`. glip: a ready `GLIP` (Python API) used instead of loading; name: its
    label in results (default: derived from the choice)."""

    model: str | None = None
    weights: str | Path | None = None
    config: str | Path | None = None
    device: str = "auto"
    dtype: str = "float32"
    glip: Any = None
    name: str | None = None

    @property
    def preset(self) -> str | None:
        """The preset named by `model` (or the default one when nothing is given)."""
        if self.model is not None:
            return self.model.lower() if is_preset(self.model) or is_packaged(self.model) else None
        return DEFAULT_PRESET if self.weights is None and self.glip is None else None

    @property
    def label(self) -> str:
        """A short name for tables and default output folders."""
        if self.name:
            return self.name
        if self.glip is not None:
            return str(getattr(self.glip.cfg, "name", "model"))
        parts = []
        if self.preset is not None:
            parts.append(self.preset)
        elif self.model is not None:
            parts.append(Path(self.model).name)
        if self.config is not None:
            parts.append(Path(self.config).stem)
        if self.weights is not None:
            parts.append(Path(self.weights).name)
        return "+".join(parts) or DEFAULT_PRESET

    @property
    def paper_model(self) -> str | None:
        """The official preset whose published numbers apply, or None (see the module docstring)."""
        if self.glip is not None or self.config is not None:
            return None
        if self.weights is None:
            return self.preset
        filename = Path(self.weights).name
        official = [p for p, c in HUB_CHECKPOINTS.items() if c.filename == filename]
        if self.model is None:
            return official[0] if official else None
        return self.preset if self.preset in official else None

    def identity(self) -> dict[str, Any]:
        """What makes two runs comparable: recorded in result folders, which refuse another model."""
        def resolved(p):
            return None if p is None else str(Path(p).expanduser().resolve())

        model = (self.model if self.model is None or is_preset(self.model) or is_packaged(self.model)
                 else resolved(self.model))
        return {"model": self.label if self.glip is not None else model, "weights": resolved(self.weights),
                "config": resolved(self.config), "dtype": self.dtype}

    def load(self):
        """The GLIP (on the CPU for a loaded checkpoint; a ready `glip` as it is)."""
        if self.glip is not None:
            return self.glip
        return load_model(resolve_model_source(model=self.model, weights=self.weights, config=self.config))

    def check_device(self):
        """The resolved torch device and dtype (GlipError for an unavailable one), before any loading."""
        return resolve_device(self.device), resolve_dtype(self.dtype)


def folder_label(text: str) -> str:
    """`text` as a safe folder name."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._") or "model"


def default_output(benchmark: str, model: BenchModel) -> Path:
    """`bench-results/<benchmark>/<model label>` (relative to the working folder)."""
    return Path("bench-results") / folder_label(benchmark) / folder_label(model.label)

