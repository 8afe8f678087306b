"""The bert-base-uncased WordPiece tokenizer, built offline from the vocab shipped with glip."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from transformers import BertTokenizerFast

from glipcli.errors import GlipError

VOCAB_SIZE = 30522
VOCAB_PATH = Path(__file__).resolve().parents[1] / "assets" / "bert-base-uncased-vocab.txt"


def _construct(vocab_path: Path) -> BertTokenizerFast | None:
    """Build the tokenizer, trying the vocab keyword of each transformers generation.

    transformers 5.x takes `vocab=` and silently ignores `vocab_file=` (it then builds a
    5-token vocab that maps every word to [UNK]); 4.x takes `vocab_file=` and fails on
    `vocab=`. So each keyword is tried and judged by the resulting vocab size.
    """
    attempts: list[dict[str, Any]] = [{"vocab": str(vocab_path)}, {"vocab_file": str(vocab_path)}]
    for kwargs in attempts:
        try:
            tokenizer = BertTokenizerFast(do_lower_case=True, **kwargs)
        except (TypeError, ValueError, OSError):
            continue
        if len(tokenizer) == VOCAB_SIZE:
            return tokenizer
    return None


@functools.lru_cache(maxsize=1)
def load_tokenizer() -> BertTokenizerFast:
    """Return the (cached) lower-cased bert-base-uncased fast tokenizer (30522 tokens)."""
    if not VOCAB_PATH.is_file():
        raise GlipError(f"{VOCAB_PATH}: tokenizer vocab missing from the glip installation")
    tokenizer = _construct(VOCAB_PATH)
    if tokenizer is None:
        raise GlipError(
            f"could not build the BERT tokenizer from {VOCAB_PATH} with this transformers "
            f"version (expected a {VOCAB_SIZE}-token vocab)"
        )
    return tokenizer
