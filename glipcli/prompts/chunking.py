"""Split a prompt spec into captions that fit the model's token budget (long class lists).

GLIP reads at most `max_query_len` tokens (256, [CLS] and [SEP] included). A list such as
LVIS's 1203 classes is split into chunks: consecutive classes packed greedily while the
chunk's caption fits, every chunk carrying all suppression phrases. No class is ever cut:
a class that cannot fit even alone is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from glipcli.errors import GlipError
from glipcli.prompts.encoding import MAX_QUERY_LEN, EncodedPrompt, encode_prompt
from glipcli.prompts.prompt_file import PromptSpec
from glipcli.prompts.tokenizer import load_tokenizer


@dataclass
class PromptChunk:
    """One caption of a chunked prompt.

    class_indices[i]: the global class index (into the spec) of the chunk's i-th phrase.
    prompt: the encoded chunk; its phrases are the chunk's classes then the spec's
    suppression phrases, so a detection label `l` (1-based phrase index) is class
    `class_indices[l - 1]` when `l <= len(class_indices)` and a suppression phrase otherwise.
    """

    class_indices: list[int]
    prompt: EncodedPrompt

    @property
    def num_classes(self) -> int:
        return len(self.class_indices)

    def phrase_class(self, label: int) -> int | None:
        """Global class index of 1-based phrase label `label`; None for a suppression phrase."""
        if not 1 <= label <= len(self.prompt.phrases):
            raise IndexError(f"phrase label {label} outside 1..{len(self.prompt.phrases)}")
        return self.class_indices[label - 1] if label <= self.num_classes else None


@dataclass
class ChunkPlan:
    """A spec split into chunks; every class lies in exactly one chunk, in spec order."""

    spec: PromptSpec
    chunks: list[PromptChunk]
    max_tokens: int

    @property
    def caption(self) -> str:
        """The whole spec's caption (what a single chunk would read; a label for outputs)."""
        return self.spec.caption().caption


def count_tokens(caption: str, tokenizer: PreTrainedTokenizerBase | None = None) -> int:
    """Tokens of `caption` with [CLS] and [SEP], never truncated."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    return len(tokenizer(caption, add_special_tokens=True, truncation=False)["input_ids"])


def plan_chunks(spec: PromptSpec, max_tokens: int = MAX_QUERY_LEN, chunk_size: int | None = None,
                tokenizer: PreTrainedTokenizerBase | None = None) -> ChunkPlan:
    """Pack the spec's classes, in order, into as few captions of <= max_tokens tokens as the
    greedy order allows; `chunk_size` also caps the classes per chunk (`--chunk-size`).

    Raises GlipError for a class that does not fit alone (with the suppression phrases) and
    for a class whose grounded text maps to no token (it could never be detected).
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise GlipError(f"chunk size must be a whole number of classes, at least 1 (got {chunk_size!r})")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    limit = chunk_size if chunk_size is not None else len(spec.classes)

    def fits(indices: list[int]) -> bool:
        return count_tokens(spec.subset(indices).caption().caption, tokenizer) <= max_tokens

    groups: list[list[int]] = []
    current: list[int] = []
    for index in range(len(spec.classes)):
        if current and len(current) < limit and fits(current + [index]):
            current.append(index)
            continue
        if current:
            groups.append(current)
        current = [index]
        if not fits(current):
            raise GlipError(_too_long_message(spec, index, max_tokens, tokenizer))
    groups.append(current)

    chunks = [PromptChunk(group, _encode(spec, group, max_tokens, tokenizer)) for group in groups]
    return ChunkPlan(spec=spec, chunks=chunks, max_tokens=max_tokens)


def _encode(spec: PromptSpec, indices: list[int], max_tokens: int,
            tokenizer: PreTrainedTokenizerBase) -> EncodedPrompt:
    caption = spec.subset(indices).caption()
    prompt = encode_prompt(caption.caption, caption.phrases, max_length=max_tokens, tokenizer=tokenizer)
    for index, tokens in zip(indices, prompt.token_spans):
        if not tokens:
            cls = spec.classes[index]
            raise GlipError(f"class {cls.name!r}: its text {cls.grounded_text!r} maps to no token, "
                            "so it could never be detected")
    return prompt


def _too_long_message(spec: PromptSpec, index: int, max_tokens: int,
                      tokenizer: PreTrainedTokenizerBase) -> str:
    cls = spec.classes[index]
    needed = count_tokens(spec.subset([index]).caption().caption, tokenizer)
    context = f" with the {len(spec.suppress)} suppression phrase(s)" if spec.suppress else ""
    return (f"class {cls.name!r} needs {needed} tokens{context}, more than the model's "
            f"{max_tokens}-token prompt ([CLS] and [SEP] included); shorten its text, prefix or suffix")
