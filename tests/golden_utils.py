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
