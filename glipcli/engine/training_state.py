"""Resumable training checkpoints: safetensors files only, never a partial one.

Layout inside the run's output folder:

    checkpoints/latest.json                  {"name": "epoch-0003-step-00000", ...}
    checkpoints/epoch-0003-step-00000/
        model.safetensors                    the trained weights (full model, or the prompt offset)
        state.safetensors                    optimiser tensors + JSON metadata: epoch, step,
                                             schedules, history, run config, optimiser layout
        rng-0.safetensors (one per process)  torch CPU (and CUDA) generator states

A checkpoint is written into a hidden temporary folder, renamed into place (atomic), and only
then does `latest.json` (written atomically) point to it; the previous checkpoint is removed
last. An interruption at any moment leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from glipcli.errors import GlipError, clip, excerpt
from glipcli.io import atomic_write, json_text, parse_json, read_json

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
STATE_FORMAT = "glipcli-train-state"


_CHECKPOINT_NAME = re.compile(r"(epoch-\d+-)?step-\d+")  # fine-tuning and pre-training names; no path parts


def checkpoint_name(epoch: int, step: int) -> str:
    return f"epoch-{epoch:04d}-step-{step:05d}"


# -- optimiser state <-> tensors + JSON ------------------------------------------------------------
def optimizer_to_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`optimizer.state_dict()` -> (tensors named `optim/<param>/<key>`, JSON-able layout)."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, entry in state["state"].items():
        keys = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().to("cpu").contiguous()
                keys[key] = "tensor"
            else:
                keys[key] = value
        layout["state"][str(index)] = keys
    return tensors, layout


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], layout: dict[str, Any]) -> dict:
    state: dict[int, dict] = {}
    for index, keys in layout["state"].items():
        entry = {}
        for key, value in keys.items():
            entry[key] = tensors[f"optim/{index}/{key}"] if value == "tensor" else value
        state[int(index)] = entry
    groups = []
    for group in layout["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# -- random generators -----------------------------------------------------------------------------
def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted((k for k in tensors if k.startswith("torch_cuda_")),
                                             key=lambda k: int(k.rsplit("_", 1)[1]))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# -- files -------------------------------------------------------------------------------------------
def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise GlipError(f"{path}: missing from the checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:
        raise GlipError(f"{path}: damaged checkpoint file ({str(exc).strip()[:200]})") from None


def save_state(path: Path, state: dict[str, Any], optimizer_state: dict) -> None:
    tensors, layout = optimizer_to_tensors(optimizer_state)
    # Internal state read back only by `load_state` (Python's JSON): the schedules' initial best
    # values are -inf, which this encoding keeps exactly.
    metadata = {"format": STATE_FORMAT, "state": json.dumps(state), "optimizer": json.dumps(layout)}
    save_tensors(path, tensors, metadata)


def load_state(path: Path) -> tuple[dict[str, Any], dict]:
    """(trainer state, optimizer state dict)."""
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != STATE_FORMAT:
        raise GlipError(f"{path}: not a glip training-state file")
    try:
        state = parse_json(metadata["state"], f"{path}: training state")
        optimizer = optimizer_from_tensors(tensors, parse_json(metadata["optimizer"], f"{path}: optimiser layout"))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise GlipError(f"{path}: damaged training state ({type(exc).__name__}: {clip(exc, 120)})") from None
    if not isinstance(state, dict):
        raise GlipError(f"{path}: damaged training state (not an object)")
    return state, optimizer


def temporary_dir(root: Path, name: str) -> Path:
    return root / CHECKPOINTS / f".tmp-{name}"


def prepare_temporary(root: Path, name: str) -> Path:
    tmp = temporary_dir(root, name)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(root: Path, name: str, info: dict[str, Any]) -> Path:
    """Move the filled temporary folder into place, point `latest.json` at it, drop the others."""
    folder = root / CHECKPOINTS
    tmp, final = temporary_dir(root, name), folder / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    text = json_text({"name": name, **info}, folder / LATEST, indent=2) + "\n"
    atomic_write(folder / LATEST, lambda p: p.write_text(text))
    for other in folder.iterdir():
        if other.is_dir() and other.name != name:
            shutil.rmtree(other, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    """The folder of the newest complete checkpoint, or None."""
    pointer = root / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    record = read_json(pointer, "checkpoint pointer")
    name = record.get("name") if isinstance(record, dict) else None
    if not isinstance(name, str) or not _CHECKPOINT_NAME.fullmatch(name):
        raise GlipError(f"{pointer}: damaged (no valid checkpoint name; it names {excerpt(name)})")
    folder = root / CHECKPOINTS / name
    if not (folder / STATE_FILE).is_file() or not (folder / MODEL_FILE).is_file():
        raise GlipError(f"{folder}: incomplete checkpoint (model or state file missing)")
    return folder
