"""Choosing the compute device and the inference precision.

`--device auto` picks CUDA, then Apple MPS, else the CPU. `--dtype float16|bfloat16` runs the
model under `torch.autocast` on that device (weights stay float32; matrix products and
convolutions run in the reduced precision); post-processing always runs in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from glipcli.errors import GlipError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` -> cuda / mps / cpu (first available); `cpu`, `cuda`, `cuda:N`, `mps` are checked
    for availability and raise GlipError with a one-line reason when absent."""
    if isinstance(name, torch.device):
        return name
    text = name.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise GlipError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GlipError("--device cuda: CUDA is not available here (no GPU or a CPU-only torch); "
                            "use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GlipError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps":
        if not _mps_available():
            raise GlipError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    elif device.type != "cpu":
        raise GlipError(f"unsupported device {name!r}; choose one of: auto, cpu, cuda, cuda:N, mps")
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """`float32`, `float16` or `bfloat16` (also as a torch dtype)."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise GlipError(f"unsupported dtype {name}; choose one of: {', '.join(DTYPES)}")
        return name
    key = name.strip().lower()
    if key not in DTYPES:
        raise GlipError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[key]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype, cache: bool = True) -> Iterator[None]:
    """Autocast to `dtype` on `device`'s type; nothing for float32. cache: keep autocast's casts
    of the weights for the context's duration (off inside a CUDA graph capture)."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache):
        yield
