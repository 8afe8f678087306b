"""The caption a detection dataset is trained with, and the per-box token targets.

Official GLIP fine-tuning on a detection dataset (`convert_od_to_grounding_simple` with
`DATASETS.DISABLE_SHUFFLE True`) turns the category list into ONE caption, the same for every
image: the class names (`clean_name`-ed: `_` -> space, `(...)` removed) in category order joined
by `". "`, or, with a caption prompt (`DATASETS.USE_CAPTION_PROMPT`), `prefix + name + suffix`
per class. A box of class c is grounded to the tokens of c's phrase: its positive-map row is
the binary token map of that phrase (`encode_prompt`, official char-span -> token rule).

A prompt YAML (`glipcli.prompts.prompt_file.PromptSpec`) may give each dataset class a text,
prefix and suffix, and suppression phrases (encoded in the caption, never a target); its
classes are matched to the dataset's categories by name and its order is the caption order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from glipcli.errors import GlipError, excerpt
from glipcli.prompts.encoding import EncodedPrompt, encode_prompt
from glipcli.prompts.prompt_file import PromptSpec


@dataclass
class TrainingPrompt:
    """spec: the prompt; phrase_labels[i]: the dataset class of its class phrase i (phrases
    after the classes are suppression phrases, no class).
    encoded: the caption tokenized to `max_query_len`.
    class_maps: float32 [C, L] binary token map per DATASET class (label order).
    length: the token positions given to the model in training: the real tokens only. The
    official padding to 256 is equivalent: padded positions are masked in every attention and
    in the loss (whose "no object" target sits on a padded position; `GLIPLoss` handles
    trimmed text), so they change nothing but the run time."""

    spec: PromptSpec
    encoded: EncodedPrompt
    class_maps: torch.Tensor
    phrase_labels: list[int]
    length: int

    @property
    def caption(self) -> str:
        return self.encoded.caption

    @property
    def input_ids(self) -> torch.Tensor:
        """int64 [1, length]."""
        return self.encoded.input_ids[:, :self.length]

    @property
    def attention_mask(self) -> torch.Tensor:
        """int64 [1, length]."""
        return self.encoded.attention_mask[:, :self.length]

    def positive_map(self, labels: torch.Tensor) -> torch.Tensor:
        """[G, length] token targets of boxes with these class labels."""
        return self.class_maps[labels.long(), :self.length]


def dataset_prompt_spec(classes: Sequence[str], spec: PromptSpec | None = None) -> tuple[PromptSpec, list[int]]:
    """The prompt for a dataset's classes and, per prompt class, its dataset label.

    Without `spec`: the dataset names, grounded as the official code does (`clean_name`).
    With `spec`: its classes must be exactly the dataset's categories (matched by name)."""
    if spec is None:
        spec = PromptSpec.from_names(list(classes), clean_names=True)
        return spec, list(range(len(classes)))
    index = {name: i for i, name in enumerate(classes)}
    unknown = [c.name for c in spec.classes if c.name not in index]
    if unknown:
        raise GlipError(f"prompt class {excerpt(unknown[0])} is not a category of the dataset "
                        f"(categories: {', '.join(classes)})")
    covered = {c.name for c in spec.classes}
    missing = [name for name in classes if name not in covered]
    if missing:
        raise GlipError(f"the prompt file has no class for the dataset category {excerpt(missing[0])}; "
                        "list every category (by its name in the dataset)")
    return spec, [index[c.name] for c in spec.classes]


def build_training_prompt(classes: Sequence[str], max_query_len: int, spec: PromptSpec | None = None
                          ) -> TrainingPrompt:
    spec, spec_labels = dataset_prompt_spec(classes, spec)
    _refuse_indistinguishable(spec)
    caption = spec.caption()
    encoded = encode_prompt(caption.caption, caption.phrases, max_length=max_query_len)
    if encoded.truncated:
        raise GlipError(f"the training caption has more than {max_query_len} tokens; shorten the class "
                        "texts (a prompt file can give shorter ones)")
    for phrase, tokens in zip(caption.classes, encoded.token_spans):
        if not tokens:
            raise GlipError(f"class text {excerpt(phrase.text)} maps to no token of the caption")
    pmap = encoded.positive_map
    class_maps = torch.zeros(len(classes), pmap.shape[1], dtype=torch.float32)
    for phrase_index, label in enumerate(spec_labels):
        class_maps[label] = pmap[phrase_index]
    length = encoded.num_tokens
    return TrainingPrompt(spec=spec, encoded=encoded, class_maps=class_maps, phrase_labels=spec_labels,
                          length=length)


def _refuse_indistinguishable(spec: PromptSpec) -> None:
    """Two classes grounded by the same words (categories `rac_coon` and `rac coon` both become
    "rac coon") would train as one phrase with two labels the model cannot tell apart."""
    seen: dict[tuple[str, str, str], str] = {}
    for cls in spec.classes:
        key = tuple(" ".join((part or "").lower().split()) for part in (cls.prefix, cls.grounded_text, cls.suffix))
        if key in seen:
            raise GlipError(f"the classes {excerpt(seen[key])} and {excerpt(cls.name)} are both written "
                            f"{excerpt(cls.grounded_text.strip())} in the caption: the model could not tell them "
                            "apart; rename one category, or give each its own text with --prompt-file")
        seen[key] = cls.name
