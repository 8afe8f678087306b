"""Reading official GLIP checkpoints and reading/writing our own safetensors files.

Official `.pth` files hold `{"model": state_dict, ...}` written from a DistributedDataParallel
model (keys prefixed `module.`), with the official module paths. The released files are training
checkpoints: beside `model` they hold `model_ema` and the optimizer's state (about 4x the weights).
They are read with `torch.load(weights_only=True, mmap=True)` (no code can run; entries other than
`model` are never read from disk), their keys are mapped onto our module tree, and any missing,
unexpected or mis-shaped entry is reported by name. Extra entries of the kinds the releases carry
(BERT's pooler, the masked-language-model head) are skipped with one log line, as the official
loader skips every extra key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from torch import nn

from glipcli.config import GLIPConfig
from glipcli.errors import GlipError, excerpt
from glipcli.io import atomic_write, parse_json
from glipcli.modeling.anchors import cell_anchor
from glipcli.modeling.glip import GLIP

log = logging.getLogger(__name__)

FORMAT_TAG = "glipcli"

# Checkpoint entries that the model recomputes; the official loader does not need them either.
_DERIVED_KEYS = (
    re.compile(r"^backbone\.swin\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$"),
    re.compile(r"^language\.bert\.embeddings\.(position_ids|token_type_ids)$"),
)
# Entries of released checkpoints that the model has no counterpart for, by kind. BERT's pooler is
# kept by the transformers versions GLIP was trained with (GLIP never uses it; mmdetection's converter
# drops it too); `mlm_head` exists where training used the masked-language-model loss. Matched after
# the official names are mapped onto ours (the pooler maps to `language.bert.pooler.*`).
RELEASE_EXTRAS = {
    "BERT pooler": re.compile(r"^(language\.bert|language_backbone\.body\.model)\.pooler\."),
    "MLM head": re.compile(r"^rpn\.head\.mlm_head\."),
}
_DYCONV_NAMES = {
    "DyConv.0.conv.": "from_coarser.conv.",
    "DyConv.0.bn.": "from_coarser.norm.",
    "DyConv.1.conv.": "same_level.conv.",
    "DyConv.1.bn.": "same_level.norm.",
    "DyConv.2.conv.": "from_finer.conv.",
    "DyConv.2.bn.": "from_finer.norm.",
    "AttnConv.1.": "scale_attention.",
    "relu.fc.0.": "dyrelu.fc1.",
    "relu.fc.2.": "dyrelu.fc2.",
    "offset.": "offset_mask.",
}
_HEAD_NAMES = {
    "cls_logits.": "cls_logits.",
    "bbox_pred.": "bbox_pred.",
    "centerness.": "centerness.",
    "dot_product_projection_text.": "token_projection.",
}
_HEAD_PARAMS = ("log_scale", "bias_lang", "bias0")


def _map_dyconv(rest: str) -> str | None:
    for old, new in _DYCONV_NAMES.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def _map_official_key(key: str, early_fusion: bool) -> str | None:
    """Our parameter name for an official state-dict key, or None if it has no counterpart."""
    if key.startswith("backbone.body."):
        return "backbone.swin." + key[len("backbone.body."):]
    m = re.match(r"backbone\.fpn\.fpn_(inner|layer)(\d)\.(.+)$", key)
    if m:
        kind = "lateral_convs" if m.group(1) == "inner" else "output_convs"
        return f"backbone.fpn.{kind}.{int(m.group(2)) - 2}.{m.group(3)}"
    m = re.match(r"backbone\.fpn\.top_blocks\.(p6|p7)\.(.+)$", key)
    if m:
        return f"backbone.fpn.{m.group(1)}.{m.group(2)}"
    if key.startswith("language_backbone.body.model."):
        return "language.bert." + key[len("language_backbone.body.model."):]
    m = re.match(r"rpn\.head\.dyhead_tower\.(\d+)\.(.+)$", key)
    if m:
        index, rest = int(m.group(1)), m.group(2)
        if not early_fusion:
            mapped = _map_dyconv(rest)
            return None if mapped is None else f"head.layers.{index}.dyconv.{mapped}"
        layer, part = divmod(index, 3)
        if part == 0:
            return f"head.layers.{layer}.fusion.{rest[len('b_attn.'):]}" if rest.startswith("b_attn.") else None
        if part == 1:
            return f"head.layers.{layer}.text_layer.{rest}"
        mapped = _map_dyconv(rest)
        return None if mapped is None else f"head.layers.{layer}.dyconv.{mapped}"
    m = re.match(r"rpn\.head\.scales\.(\d+)\.scale$", key)
    if m:
        return f"head.scales.{m.group(1)}"
    if key.startswith("rpn.head."):
        rest = key[len("rpn.head."):]
        if rest in _HEAD_PARAMS:
            return "head." + rest
        for old, new in _HEAD_NAMES.items():
            if rest.startswith(old):
                return "head." + new + rest[len(old):]
    return None


def is_official_state_dict(state: dict[str, Any]) -> bool:
    return any(k.startswith(("backbone.body.", "rpn.head.", "language_backbone.body.")) for k in state)


def _is_own_state_dict(state: dict[str, Any]) -> bool:
    return any(k.startswith(("backbone.swin.", "head.layers.", "language.bert.")) for k in state)


def convert_official_state_dict(state: dict[str, torch.Tensor], cfg: GLIPConfig
                                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an official (prefix-stripped) state dict onto our names.

    Returns (mapped, unmapped official keys). The official anchor buffers are checked against
    the config's anchors (a mismatch means the config does not fit the checkpoint)."""
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        m = re.match(r"rpn\.anchor_generator\.cell_anchors\.(\d+)$", key)
        if m:
            _check_cell_anchor(int(m.group(1)), value, cfg)
            continue
        new = _map_official_key(key, cfg.head.early_fusion)
        if new is None:
            unmapped.append(key)
        else:
            mapped[new] = value
    return mapped, unmapped


def _check_cell_anchor(level: int, value: torch.Tensor, cfg: GLIPConfig) -> None:
    sizes, strides = cfg.anchors.sizes, cfg.anchors.strides
    if level >= len(sizes):
        raise GlipError(f"checkpoint has anchors for level {level}, the config has {len(sizes)} levels")
    expected = cell_anchor(sizes[level], strides[level]).to(value.dtype)
    if tuple(value.shape) != (1, 4) or not torch.equal(value.reshape(4), expected.reshape(4)):
        raise GlipError(
            f"checkpoint anchors of level {level} are {value.reshape(-1).tolist()}, the config "
            f"gives {expected.reshape(-1).tolist()} (anchor sizes/strides do not match)")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read the raw model state dict of a `.pth`/`.pt`/`.bin` or `.safetensors` checkpoint.

    Returns (state dict, safetensors metadata or {}). Takes the `"model"` entry of an official
    training checkpoint and strips a `module.` prefix carried by every key."""
    path = Path(path)
    if not path.is_file():
        raise GlipError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise GlipError(f"{path}: checkpoint file is empty")
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:  # validates the file
                metadata = dict(f.metadata() or {})
            state = _read_safetensors(path)
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise GlipError(f"{path}: not a readable safetensors file ({_short(exc)})") from None
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            raise GlipError(_refused(path, exc)) from None
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise GlipError(f"{path}: not a readable checkpoint ({_short(exc)})") from None
            obj = _torch_load_plain(path)
        except Exception as exc:
            raise GlipError(f"{path}: not a readable checkpoint ({_short(exc)})") from None
        state = _extract_model_state(obj, path)
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, metadata


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read each tensor of a safetensors file straight into its own (aligned) allocation.

    The model takes these tensors as its parameters (`assign=True`), so loading holds one copy
    of the weights. Views of a memory map would avoid even that, but the file's tensors are not
    64-byte aligned, and kernels then round differently in the last bits: results would depend
    on how the weights were loaded."""
    import json
    import struct

    state = {}
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        start = 8 + header_len
        for key, info in header.items():
            if key == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            f.seek(start + begin)
            if f.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy())) != end - begin:
                raise GlipError(f"{path}: truncated safetensors file")
            state[key] = tensor
    return state


def _torch_load_plain(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise GlipError(_refused(path, exc)) from None
    except Exception as exc:
        raise GlipError(f"{path}: not a readable checkpoint ({_short(exc)})") from None


MODEL_ENTRIES = ("model", "state_dict", "model_ema")


def _extract_model_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The model's state dict inside a checkpoint: its `model` entry (as the official loader reads
    it; preferred to `model_ema`), else `state_dict`, else `model_ema`, else the whole dict. The
    other entries (optimizer, scheduler, iteration) are dropped unread (they are memory-mapped)."""
    if isinstance(obj, dict):
        obj = next((obj[k] for k in MODEL_ENTRIES if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj:
        raise GlipError(f"{path}: not a GLIP checkpoint (no state dict inside)")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    odd = [k for k in state if not isinstance(k, str)]
    if odd:
        raise GlipError(f"{path}: not a GLIP checkpoint (a tensor is stored under the non-text key "
                        f"{excerpt(odd[0])})")
    if not state:
        raise GlipError(f"{path}: not a GLIP checkpoint (no tensors inside)")
    return state


def _refused(path: Path, exc: Exception) -> str:
    """The message for a file the weights-only unpickler refuses (objects other than tensors and
    plain containers, e.g. code, or a corrupt pickle). torch's own first line advises retrying
    with weights_only=False, which must not reach users; keep only its specific reason."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if not line.startswith(boilerplate)), "")
    detail = detail.replace("WeightsUnpickler error:", "").strip() or type(exc).__name__
    return (f"{path}: refused to load: not a plain weights file (only tensors and basic containers "
            f"are read; {detail[:200]})")


def _short(exc: Exception) -> str:
    """The first sentence of an exception's message (torch's and safetensors' run on with advice),
    prefixed with "truncated or damaged file" when that is what the reader's complaint means."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.split(r"(?<=[a-z)])\. ", text, maxsplit=1)[0].rstrip(".")[:200]
    damaged = ("central directory", "file not fully covered", "invalid header", "unexpected eof",
               "truncated", "incomplete", "failed reading")
    if any(marker in text.lower() for marker in damaged):
        return f"truncated or damaged file: {text}"
    return text


def _summarise(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> dict[str, list[str]]:
    """Load an official `.pth` or one of our `.safetensors` files into `model` (a `GLIP`).

    Raises GlipError naming missing, unexpected and mis-shaped parameters (with strict=True, any
    of them; with strict=False, only mis-shaped ones). Returns {"missing": [...], "unexpected": [...]}."""
    state, _ = read_state_dict(path)
    return load_state_dict_checked(model, state, source=str(path), strict=strict)


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                            strict: bool = True, assign: bool = False) -> dict[str, list[str]]:
    """Check `state` against `model` by name and shape, then load it.

    assign=True makes the checkpoint tensors the model's parameters (no copy; used with a model
    built by `build_empty`, whose parameters have no storage yet)."""
    cfg: GLIPConfig = model.cfg
    if is_official_state_dict(state):
        state, unexpected = convert_official_state_dict(state, cfg)
    elif _is_own_state_dict(state):
        unexpected = []
    else:
        raise GlipError(f"{source}: not a GLIP checkpoint (unrecognised keys such as {_summarise(list(state), 3)})")

    own = model.state_dict()
    derived = {k for k in state if any(p.match(k) for p in _DERIVED_KEYS)}
    mismatched = []
    for key in sorted(derived):
        if key in own and own[key].shape != state[key].shape:
            mismatched.append(f"{key} (checkpoint {tuple(state[key].shape)}, model {tuple(own[key].shape)})")
        state.pop(key)
    unexpected += [k for k in state if k not in own]
    unexpected = _skip_release_extras(unexpected, source)
    missing = [k for k in own if k not in state and not any(p.match(k) for p in _DERIVED_KEYS)]
    mismatched += [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in state if k in own and own[k].shape != state[k].shape
    ]
    if mismatched:
        raise GlipError(f"{source}: checkpoint does not fit the '{cfg.name}' architecture; "
                        f"shape mismatch for {_summarise(mismatched, 3)}")
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected {_summarise(unexpected)}")
        raise GlipError(f"{source}: checkpoint does not match the '{cfg.name}' architecture: " + "; ".join(parts))
    to_load = {k: v for k, v in state.items() if k in own}
    if assign:
        # Parameters take the checkpoint's tensors as they are, unless their dtype or layout
        # differs (a float16 checkpoint, an expanded view): then a proper copy is made.
        to_load = {k: v if v.dtype == own[k].dtype and v.is_contiguous() else v.to(own[k].dtype).contiguous()
                   for k, v in to_load.items()}
    model.load_state_dict(to_load, strict=False, assign=assign)
    return {"missing": missing, "unexpected": unexpected}


def release_extra_kind(key: str) -> str | None:
    """The kind of released-checkpoint extra `key` is (see RELEASE_EXTRAS), or None."""
    return next((kind for kind, pattern in RELEASE_EXTRAS.items() if pattern.match(key)), None)


def _skip_release_extras(unexpected: list[str], source: str) -> list[str]:
    """`unexpected` without the release extras; logs one line counting those skipped."""
    counts: dict[str, int] = {}
    kept = []
    for key in unexpected:
        kind = release_extra_kind(key)
        if kind is None:
            kept.append(key)
        else:
            counts[kind] = counts.get(kind, 0) + 1
    if counts:
        total = sum(counts.values())
        kinds = ", ".join(f"{kind} {counts[kind]}" for kind in RELEASE_EXTRAS if kind in counts)
        log.warning("%s: ignored %d checkpoint entr%s the model does not use (%s)", source, total,
                    "y" if total == 1 else "ies", kinds)
    return kept


def build_empty(cfg: GLIPConfig) -> nn.Module:
    """A `GLIP` whose parameters are not allocated or initialised (meta device) while its
    buffers are real; fill it with `load_state_dict_checked(..., assign=True)`. Building this
    way skips the random initialisation (seconds for GLIP-T) and a second copy of the weights."""
    with init_empty_weights(include_buffers=False), _parameter_init_skipped():
        return GLIP(cfg)


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
                   "xavier_normal_", "kaiming_uniform_", "kaiming_normal_")


@contextlib.contextmanager
def _parameter_init_skipped():
    """`torch.nn.init` fills do nothing inside: on meta parameters they are no-ops anyway, but
    they dispatch through torch's Python references, whose first use imports torch._dynamo
    (seconds and ~0.17 GiB of memory for GLIP-T). Buffers are never filled through nn.init."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(nn.init, name, _no_init)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _no_init(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor



def config_metadata(cfg: GLIPConfig) -> dict[str, str]:
    """The metadata that makes a safetensors file ours: the format tag and the model's config."""
    return {"format": FORMAT_TAG, "config": json.dumps(cfg.to_dict(), sort_keys=True)}


def config_from_metadata(metadata: dict[str, str], source: str = "checkpoint") -> GLIPConfig | None:
    """The config stored in one of our safetensors files (`config_metadata`), if any. Damaged
    config metadata (not JSON, nested or sized beyond reason, not a config) is one line naming
    `source`."""
    if metadata.get("format") != FORMAT_TAG or "config" not in metadata:
        return None
    raw = parse_json(metadata["config"], f"{source}: config metadata", max_size=1_000_000)
    return config_from_record(raw, source, "config metadata")


def config_from_record(raw: Any, source: str, what: str = "model config") -> GLIPConfig:
    """A GLIPConfig from its stored dict (a run.json's `model_config`, parsed metadata); one line
    naming `source` when it is damaged."""
    try:
        return GLIPConfig.from_dict(raw)
    except GlipError as exc:
        reason = str(exc).removeprefix("not a GLIP model config ").strip("()")
        raise GlipError(f"{source}: damaged {what} ({reason})") from None


def save_safetensors(model: nn.Module, path: str | Path, dtype: torch.dtype | None = None,
                     extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the model weights (our names) and its config to `path`, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    derived = [p for p in _DERIVED_KEYS]
    tensors = {}
    for key, value in model.state_dict().items():
        if any(p.match(key) for p in derived):
            continue
        value = value.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous().cpu()
    metadata = config_metadata(model.cfg)
    metadata.update(extra_metadata or {})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path
