"""Helpers shared by the golden-parity tests: building the reduced reference models."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from safetensors.torch import load_file

from glipcli.checkpoint import load_checkpoint
from glipcli.modeling.glip import GLIP
from glipcli.yacs_config import config_from_yacs

CASES = ("det", "det_demo", "grounding")
LEVELS = ("p3", "p4", "p5", "p6", "p7")


@functools.lru_cache(maxsize=None)
def golden_model(variant_dir: str) -> GLIP:
    """The reduced GLIP-T (`tiny`) or GLIP-T(A) (`tiny_a`) model with the golden weights, eval mode."""
    root = Path(variant_dir)
    # tiny_a has no bert_config.json of its own? it has; both dirs carry one.
    cfg = config_from_yacs(root / "config.yaml")
    torch.manual_seed(0)
    model = GLIP(cfg).eval()
    load_checkpoint(model, root / "weights.safetensors")
    return model


@functools.lru_cache(maxsize=None)
def load(path: str) -> dict[str, torch.Tensor]:
    return load_file(path)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def fabricate_official_checkpoint(keys_json: Path, out: Path, fill: float = 0.0) -> Path:
    """Write a checkpoint in the official on-disk layout ({"model": {"module." + key: tensor}})
    with the shapes of a real one. Each tensor is one stored value expanded to its shape, so the
    file stays tiny; the anchor buffers hold the true cell anchors, as real checkpoints do."""
    import json

    from glipcli.modeling.anchors import cell_anchor

    entries = json.loads(Path(keys_json).read_text())["entries"]
    state = {}
    for entry in entries:
        dtype = getattr(torch, entry["dtype"])
        m = entry["model_key"]
        if m.startswith("rpn.anchor_generator.cell_anchors."):
            level = int(m.rsplit(".", 1)[1])
            state[entry["key"]] = cell_anchor(64 * 2**level, 8 * 2**level).reshape(1, 4)
        else:
            value = torch.full((1,), fill if dtype.is_floating_point else 0, dtype=dtype)
            state[entry["key"]] = value.expand(entry["shape"]) if entry["shape"] else value.reshape(())
    torch.save({"model": state, "iteration": 90000}, out)
    return out
