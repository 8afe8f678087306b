"""Tokenize a caption and map each phrase's character span to token positions (official rule)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase

from glipcli.errors import GlipError
from glipcli.prompts.caption import Phrase, detection_caption
from glipcli.prompts.tokenizer import load_tokenizer

MAX_QUERY_LEN = 256


@dataclass
class EncodedPrompt:
    """A tokenized caption plus the token positions of each phrase.

    input_ids, attention_mask, token_type_ids: int64 [1, L], L = max_length (padded).
    token_spans[p]: token indices covered by phrase p (empty if the phrase was dropped).
    num_tokens: real tokens, [CLS] and [SEP] included. truncated: the caption had more
    than L tokens and was cut.
    """

    caption: str
    phrases: list[Phrase]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    token_spans: list[list[int]]
    num_tokens: int
    truncated: bool

    @property
    def max_length(self) -> int:
        return int(self.input_ids.shape[-1])

    @property
    def positive_map(self) -> torch.Tensor:
        """float32 [P, L]: 1 on the tokens of each phrase, 0 elsewhere (all-zero if dropped)."""
        pmap = torch.zeros(len(self.token_spans), self.max_length, dtype=torch.float32)
        for row, tokens in enumerate(self.token_spans):
            if tokens:
                pmap[row, tokens] = 1.0
        return pmap

    @property
    def positive_map_normalized(self) -> torch.Tensor:
        """float32 [P, L]: each positive-map row divided by (its sum + 1e-6)."""
        pmap = self.positive_map
        return pmap / (pmap.sum(-1)[:, None] + 1e-6)

    @property
    def label_to_token(self) -> dict[int, list[int]]:
        """{phrase index + 1: token indices}, the map the official post-processor uses."""
        return {i + 1: list(tokens) for i, tokens in enumerate(self.token_spans)}


def _char_to_token(encoding: BatchEncoding, char_index: int, caption_len: int) -> int | None:
    # The fast tokenizer raises OverflowError for negative indices; outside the caption
    # there is simply no token.
    if char_index < 0 or char_index >= caption_len:
        return None
    return encoding.char_to_token(0, char_index)


def _first_token(encoding: BatchEncoding, indices: Sequence[int], caption_len: int) -> int | None:
    for index in indices:
        token = _char_to_token(encoding, index, caption_len)
        if token is not None:
            return token
    return None


def span_to_tokens(encoding: BatchEncoding, start: int, end: int, caption_len: int) -> list[int]:
    """Official char-span -> token rule (maskrcnn_benchmark create_positive_map).

    First token: the token of char `start`, else of `start+1`, else of `start+2`.
    Last token: the token of char `end-1`, else of `end-2`, else of `end-3`.
    Either missing -> the phrase is dropped (empty list); else tokens first..last inclusive.
    """
    first = _first_token(encoding, (start, start + 1, start + 2), caption_len)
    last = _first_token(encoding, (end - 1, end - 2, end - 3), caption_len)
    if first is None or last is None:
        return []
    return list(range(first, last + 1))


def _check_span(phrase: Phrase, caption_len: int) -> None:
    if not isinstance(phrase.start, int) or not isinstance(phrase.end, int):
        raise GlipError(f"phrase {phrase.text!r}: span bounds must be integers")
    if phrase.start < 0 or phrase.end > caption_len or phrase.start >= phrase.end:
        raise GlipError(
            f"phrase {phrase.text!r}: span [{phrase.start}, {phrase.end}) is not a non-empty "
            f"range inside the {caption_len}-character caption"
        )


def encode_prompt(
    caption: str,
    phrases: Sequence[Phrase],
    max_length: int = MAX_QUERY_LEN,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    strict_spans: bool = True,
) -> EncodedPrompt:
    """Tokenize `caption` (padded/truncated to `max_length`) and locate each phrase's tokens.

    With `strict_spans` (default) a span outside the caption or empty raises GlipError.
    With `strict_spans=False` spans are used as given, like the official code: characters
    outside the caption map to no token, so such a phrase is usually dropped (empty token list).
    A phrase whose tokens were cut by truncation is dropped as well.
    """
    if not isinstance(caption, str) or not caption.strip():
        raise GlipError("the caption is empty")
    if max_length < 2:
        raise GlipError(f"max_length must be at least 2 (got {max_length})")
    if strict_spans:
        for phrase in phrases:
            _check_span(phrase, len(caption))
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    if not getattr(tokenizer, "is_fast", False):
        raise GlipError("a fast (Rust-backed) tokenizer is needed to map phrases to tokens")

    encoding = tokenizer(
        [caption],
        max_length=max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    input_ids = encoding["input_ids"].long()
    attention_mask = encoding["attention_mask"].long()
    token_type_ids = encoding.get("token_type_ids")
    token_type_ids = (
        torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids.long()
    )
    truncated = bool(encoding.encodings and encoding.encodings[0].overflowing)

    token_spans = [
        span_to_tokens(encoding, phrase.start, phrase.end, len(caption)) for phrase in phrases
    ]
    return EncodedPrompt(
        caption=caption,
        phrases=list(phrases),
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        token_spans=token_spans,
        num_tokens=int(attention_mask.sum()),
        truncated=truncated,
    )


def encode_class_names(
    class_names: Sequence[str],
    max_length: int = MAX_QUERY_LEN,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> EncodedPrompt:
    """Encode a detection prompt built with the official evaluation caption (`"a. b. c"`)."""
    caption, phrases = detection_caption(class_names)
    return encode_prompt(caption, phrases, max_length=max_length, tokenizer=tokenizer)
