"""Prompt tuning (the official `language_prompt_v2`) and the adapter files it writes.

Official `SOLVER.TUNING_HIGHLEVEL_OVERRIDE language_prompt_v2` (tools/finetune.py) freezes the
visual backbone, the FPN, the whole head (`RPN.FREEZE`) and the language backbone, and turns on
`DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER`: a bias-free `Linear(lang_dim, 1000)` whose weight is
zero-initialised and used as a table of per-token-position offsets (`VLDyHeadModule.forward`):

    offset = tunable_linear.weight[:L]          # [L, lang_dim], L = token positions
    embedded += offset;  hidden += offset       # the language features the head receives

Only that table trains (AdamW, `SOLVER.BASE_LR 0.05`, `SOLVER.WEIGHT_DECAY 0.25`, no bias
factor since it is a weight), every module in eval mode. An offset belongs to the token
positions of the caption it was tuned with, so an adapter stores the exact caption, its token
ids and the identity of the base model, and refuses anything else.

Here the table has `max_query_len` rows (the official 1000 rows beyond 256 are never read).
Rows of padding positions receive no gradient (padded tokens are masked everywhere), so they
stay zero. An adapter for GLIP-T holds 256 x 768 float32 = 786,432 bytes of offsets.

    adapter = load_adapter("out/adapter_best.safetensors")
    adapter.check_model(predictor.model)    # same base weights
    adapter.attach(predictor.model)         # every text encoding now gets the offset
    predictor.predict("img.jpg", adapter.encoded_prompt())
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glipcli.errors import GlipError, clip, excerpt
from glipcli.io import atomic_write, parse_json
from glipcli.modeling.glip import GLIP
from glipcli.modeling.language import TextFeatures
from glipcli.prompts.caption import Phrase
from glipcli.prompts.encoding import EncodedPrompt, encode_prompt

ADAPTER_FORMAT = "glipcli-prompt-adapter"
ADAPTER_VERSION = "1"
OFFSET_KEY = "text_offset"
OFFICIAL_LR = 0.05
OFFICIAL_WEIGHT_DECAY = 0.25


def add_text_offset(text: TextFeatures, offset: torch.Tensor) -> TextFeatures:
    """The official v2 prompt: `offset[:L]` added to `hidden` and `embedded` ([B, L, D]);
    `mask` and `aggregate` unchanged (the official code leaves them)."""
    length = text.hidden.shape[1]
    if length > offset.shape[0]:
        raise GlipError(f"the text has {length} token positions, the prompt offset only {offset.shape[0]}")
    rows = offset[:length].to(dtype=text.hidden.dtype, device=text.hidden.device).unsqueeze(0)
    return TextFeatures(hidden=text.hidden + rows, embedded=text.embedded + rows, mask=text.mask,
                        aggregate=text.aggregate)


class TextOffset(nn.Module):
    """The trainable table: `weight` [positions, width], zero-initialised."""

    def __init__(self, positions: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(positions, width))

    def forward(self, text: TextFeatures) -> TextFeatures:
        return add_text_offset(text, self.weight)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (name, shape and float32 values, sorted by
    name): the same for the same weights whichever file or dtype they were loaded from."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        tensor = value.detach().to("cpu")
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


ARCHITECTURE_PARTS = ("swin", "fpn", "language", "head", "anchors")


def model_identity(model: GLIP) -> dict[str, str]:
    """What an adapter is tied to: the architecture (config name, and a hash of the parts that
    shape the network: not the input size, post-processing or loss settings) and the weights."""
    config = model.cfg.to_dict()
    architecture = json.dumps({k: config[k] for k in ARCHITECTURE_PARTS}, sort_keys=True)
    return {
        "config_name": model.cfg.name,
        "config_sha256": hashlib.sha256(architecture.encode()).hexdigest(),
        "weights_sha256": weights_digest(model),
    }


@dataclass
class PromptAdapter:
    """A tuned prompt: the offsets and everything they are only valid with.

    offset: float32 [positions, width]. caption / input_ids (real tokens, [CLS] and [SEP]
    included) / phrases: the prompt it was tuned for. class_names: the output labels of the
    class phrases. base: `model_identity` of the frozen model. prompt_yaml: the prompt spec
    (`PromptSpec.to_yaml`), for re-using the prompt."""

    offset: torch.Tensor
    caption: str
    input_ids: list[int]
    phrases: list[Phrase]
    class_names: list[str]
    base: dict[str, str]
    prompt_yaml: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    # -- checks ----------------------------------------------------------------------------------
    def check_prompt(self, prompt: EncodedPrompt | str, source: str = "the adapter") -> None:
        """GlipError unless `prompt` is the exact caption (and tokens) the adapter was tuned for."""
        caption = prompt if isinstance(prompt, str) else prompt.caption
        if caption != self.caption:
            raise GlipError(f"{source} was tuned for the prompt {excerpt(self.caption)} and cannot be used with "
                            f"{excerpt(caption)} (its offsets belong to the token positions of that exact caption)")
        if not isinstance(prompt, str):
            ids = prompt.input_ids[0, :prompt.num_tokens].tolist()
            if ids != self.input_ids:
                raise GlipError(f"{source}: the prompt {excerpt(caption)} tokenizes differently than when the adapter "
                                "was tuned (a different tokenizer vocabulary?)")

    def check_model(self, model: GLIP, source: str = "the adapter") -> None:
        """GlipError unless `model` has the base model's architecture and weights."""
        width = model.cfg.language.hidden_size
        if self.offset.shape[1] != width:
            raise GlipError(f"{source} has {self.offset.shape[1]}-wide offsets; the model's language width is {width}")
        mine = model_identity(model)
        if mine["config_sha256"] != self.base.get("config_sha256"):
            raise GlipError(f"{source} was tuned on a {excerpt(self.base.get('config_name'))} model with another "
                            f"architecture than this {excerpt(mine['config_name'])} model")
        if mine["weights_sha256"] != self.base.get("weights_sha256"):
            raise GlipError(f"{source} was tuned on other weights than this model's (weights hash "
                            f"{self.base.get('weights_sha256', '?')[:12]}, this model {mine['weights_sha256'][:12]})")

    # -- use ---------------------------------------------------------------------------------------
    def encoded_prompt(self, max_length: int | None = None) -> EncodedPrompt:
        """The tuned caption, encoded (checked against the stored tokens)."""
        prompt = encode_prompt(self.caption, self.phrases, max_length=max_length or self.offset.shape[0])
        self.check_prompt(prompt)
        return prompt

    def apply(self, text: TextFeatures) -> TextFeatures:
        return add_text_offset(text, self.offset)

    def attach(self, model: GLIP, source: str = "the adapter") -> torch.utils.hooks.RemovableHandle:
        """Make every `model.encode_text` call return offset features. The hook refuses text
        whose real tokens are not the tuned caption's (GlipError). Returns the hook handle
        (`.remove()` detaches the adapter)."""
        expected = list(self.input_ids)

        def hook(module: nn.Module, args: tuple, output: TextFeatures) -> TextFeatures:
            input_ids, attention_mask = args[0], args[1]
            for row, mask in zip(input_ids, attention_mask):
                real = row[: int(mask.sum())].tolist()
                if real != expected:
                    raise GlipError(f"{source} was tuned for the prompt {excerpt(self.caption)}; it cannot be used "
                                    "with another prompt (its offsets belong to that caption's token positions)")
            return self.apply(output)

        return model.language.register_forward_hook(hook)

    # -- files -------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        return {
            "format": ADAPTER_FORMAT,
            "version": ADAPTER_VERSION,
            "kind": "language_prompt_v2",
            "caption": self.caption,
            "input_ids": json.dumps(self.input_ids),
            "phrases": json.dumps([[p.text, p.start, p.end] for p in self.phrases]),
            "class_names": json.dumps(self.class_names),
            "base_model": json.dumps(self.base, sort_keys=True),
            "prompt_yaml": self.prompt_yaml,
            "extra": json.dumps(self.extra, sort_keys=True),
        }

    def save(self, path: str | Path) -> Path:
        """Write the adapter as safetensors (the offset tensor + metadata), atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {OFFSET_KEY: self.offset.detach().to("cpu", torch.float32).contiguous()}
        metadata = self.metadata()
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return path


def load_adapter(path: str | Path) -> PromptAdapter:
    """Read an adapter written by `glip prompt-tune` (GlipError for anything else)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GlipError(f"{path}: no such adapter file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            keys = list(f.keys())
            offset = f.get_tensor(OFFSET_KEY) if OFFSET_KEY in keys else None
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise GlipError(f"{path}: not a readable safetensors file ({str(exc).strip()[:200]})") from None
    if metadata.get("format") != ADAPTER_FORMAT or offset is None:
        raise GlipError(f"{path}: not a glip prompt adapter (written by `glip prompt-tune`)")
    if metadata.get("version") != ADAPTER_VERSION:
        raise GlipError(f"{path}: adapter format version {excerpt(metadata.get('version'))} is not supported "
                        f"(this glip reads version {ADAPTER_VERSION})")
    if offset.dim() != 2:
        raise GlipError(f"{path}: the offset must be [positions, width], got {tuple(offset.shape)}")
    def field(key: str, default: str | None = None):
        return parse_json(metadata[key] if default is None else metadata.get(key, default), f"{path}: {key}")

    try:
        phrases = [Phrase(str(t), int(s), int(e)) for t, s, e in field("phrases")]
        return PromptAdapter(
            offset=offset.float(), caption=str(metadata["caption"]),
            input_ids=[int(i) for i in field("input_ids")],
            phrases=phrases, class_names=[str(n) for n in field("class_names")],
            base=dict(field("base_model")), prompt_yaml=metadata.get("prompt_yaml", ""),
            extra=dict(field("extra", "{}")))
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        raise GlipError(f"{path}: damaged adapter metadata ({type(exc).__name__}: {clip(exc, 120)})") from None


def adapter_offset_bytes(positions: int, width: int) -> int:
    """Bytes of an adapter's offset tensor (float32)."""
    return positions * width * 4
