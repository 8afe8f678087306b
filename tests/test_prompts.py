"""Prompt building, tokenization and the official char-span -> token rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glipcli.errors import GlipError
from glipcli.prompts import tokenizer as tokenizer_module
from glipcli.prompts.caption import Phrase, demo_caption, detection_caption
from glipcli.prompts.encoding import encode_class_names, encode_prompt
from glipcli.prompts.tokenizer import VOCAB_PATH, load_tokenizer

NAMES = ["person", "bicycle", "car", "dog"]


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_has_full_vocab_and_is_cached() -> None:
    tok = load_tokenizer()
    assert len(tok) == 30522
    assert load_tokenizer() is tok
    assert tok.is_fast


def test_tokenizer_ids_are_vocab_line_numbers_and_lowercased() -> None:
    vocab = VOCAB_PATH.read_text(encoding="utf-8").splitlines()
    ids = load_tokenizer()("HeLLo World")["input_ids"]
    assert ids == [vocab.index(word) for word in ("[CLS]", "hello", "world", "[SEP]")]


@pytest.fixture
def fresh_tokenizer_cache():
    load_tokenizer.cache_clear()
    yield
    load_tokenizer.cache_clear()


def test_tokenizer_rejects_a_wrong_vocab(
    tmp_path: Path, monkeypatch, fresh_tokenizer_cache
) -> None:
    small = tmp_path / "vocab.txt"
    small.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n", encoding="utf-8")
    monkeypatch.setattr(tokenizer_module, "VOCAB_PATH", small)
    with pytest.raises(GlipError, match="30522"):
        load_tokenizer()


def test_tokenizer_missing_vocab(tmp_path: Path, monkeypatch, fresh_tokenizer_cache) -> None:
    monkeypatch.setattr(tokenizer_module, "VOCAB_PATH", tmp_path / "nope.txt")
    with pytest.raises(GlipError, match="vocab missing"):
        load_tokenizer()


def test_tokenizer_falls_back_to_vocab_file_keyword(monkeypatch, fresh_tokenizer_cache) -> None:
    """Emulate transformers 4.x, whose constructor only understands `vocab_file=`."""
    real = tokenizer_module.BertTokenizerFast

    def old_style(*, vocab_file=None, **kwargs):
        if "vocab" in kwargs:
            raise TypeError("unexpected keyword 'vocab'")
        return real(vocab=vocab_file, **kwargs)

    monkeypatch.setattr(tokenizer_module, "BertTokenizerFast", old_style)
    assert len(load_tokenizer()) == 30522


# ---------------------------------------------------------------- captions


def test_detection_caption_official_eval_format() -> None:
    caption, phrases = detection_caption(NAMES)
    assert caption == "person. bicycle. car. dog"
    assert [caption[p.start : p.end] for p in phrases] == NAMES
    assert [p.text for p in phrases] == NAMES


def test_detection_caption_custom_separator() -> None:
    caption, phrases = detection_caption(["a", "bb"], separator=", ")
    assert caption == "a, bb"
    assert [(p.start, p.end) for p in phrases] == [(0, 1), (3, 5)]


def test_demo_caption_official_demo_format() -> None:
    caption, phrases = demo_caption(NAMES)
    assert caption == "person . bicycle . car . dog . "
    assert [caption[p.start : p.end] for p in phrases] == NAMES


@pytest.mark.parametrize("build", [detection_caption, demo_caption])
@pytest.mark.parametrize(
    ("names", "message"),
    [([], "no class names"), (["dog", ""], "#2 is empty"), (["  ", "dog"], "#1 is empty"),
     ("dog", "not a single string"), (["dog", 3], "#2 is not a string")],
)
def test_caption_rejects_bad_names(build, names, message) -> None:
    with pytest.raises(GlipError, match=message):
        build(names)


# ---------------------------------------------------------------- golden prompts


def _golden_phrases(case: dict) -> list[Phrase]:
    return [
        Phrase(text, spans[0][0], spans[0][1])
        for text, spans in zip(case["phrases"], case["tokens_positive"])
    ]


@pytest.mark.parametrize("case_name", ["det", "det_demo", "grounding"])
def test_golden_prompts_bitwise(golden_dir: Path, case_name: str) -> None:
    case = json.loads((golden_dir / "tiny" / "prompts.json").read_text())[case_name]
    ref = load_file(str(golden_dir / "tiny" / "inputs.safetensors"))

    if case_name == "det":
        caption, phrases = detection_caption(case["phrases"])
    elif case_name == "det_demo":
        caption, phrases = demo_caption(case["phrases"])
    else:
        caption, phrases = case["caption"], _golden_phrases(case)
    assert caption == case["caption"]
    assert [[[p.start, p.end]] for p in phrases] == case["tokens_positive"]

    enc = encode_prompt(caption, phrases)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        expected = ref[f"{case_name}/{key}"]
        got = getattr(enc, key)
        assert got.dtype == expected.dtype and torch.equal(got, expected), key
    assert torch.equal(enc.positive_map, ref[f"{case_name}/positive_map_binary"])
    assert torch.equal(enc.positive_map_normalized, ref[f"{case_name}/positive_map_normalized"])
    assert enc.num_tokens == case["num_real_tokens"]
    assert enc.label_to_token == {int(k): v for k, v in case["label_to_token"].items()}
    assert not enc.truncated


def test_encode_class_names_matches_golden_det(golden_dir: Path) -> None:
    ref = load_file(str(golden_dir / "tiny" / "inputs.safetensors"))
    enc = encode_class_names(NAMES)
    assert torch.equal(enc.input_ids, ref["det/input_ids"])
    assert torch.equal(enc.positive_map, ref["det/positive_map_binary"])


def test_golden_span_fallbacks_and_dropped_phrase(golden_dir: Path) -> None:
    """README section 12: begin/end fallbacks and a span past the caption end (dropped)."""
    edge = json.loads((golden_dir / "tiny" / "loss_edge.json").read_text())
    ref = load_file(str(golden_dir / "tiny" / "loss_edge.safetensors"))
    rows = []
    for i, image in enumerate(edge["images"]):
        phrases = [
            Phrase(text, spans[0][0], spans[0][1])
            for text, spans in zip(image["phrases"], image["tokens_positive"])
        ]
        enc = encode_prompt(image["caption"], phrases, strict_spans=False)
        assert torch.equal(enc.input_ids[0], ref["input_ids"][i])
        assert torch.equal(enc.attention_mask[0], ref["attention_mask"][i])
        assert enc.token_spans == image["token_positions"]
        rows.append(enc.positive_map)
    assert torch.equal(torch.cat(rows), ref["positive_map"])
    assert ref["positive_map"][-1].sum() == 0  # the dropped phrase really is in the data


# ---------------------------------------------------------------- span rule (no golden data)


def test_fallbacks_inside_caption_work_in_strict_mode() -> None:
    caption = "a woman holding a cup"
    enc = encode_prompt(caption, [Phrase("a woman ", 0, 8), Phrase(" holding", 7, 15)])
    tokens = load_tokenizer().convert_ids_to_tokens(enc.input_ids[0, : enc.num_tokens].tolist())
    assert [[tokens[t] for t in span] for span in enc.token_spans] == [["a", "woman"], ["holding"]]


def test_span_of_only_spaces_is_dropped() -> None:
    enc = encode_prompt("cat      dog", [Phrase("   ", 4, 7), Phrase("dog", 9, 12)])
    assert enc.token_spans[0] == []
    assert enc.positive_map[0].sum() == 0
    assert enc.positive_map_normalized[0].sum() == 0
    assert enc.token_spans[1] == [2]


def test_overlapping_phrases_and_normalized_rows() -> None:
    phrases = [Phrase("a cup of coffee", 0, 15), Phrase("coffee", 9, 15)]
    enc = encode_prompt("a cup of coffee", phrases)
    assert enc.token_spans == [[1, 2, 3, 4], [4]]
    pmap = enc.positive_map
    assert pmap.shape == (2, 256) and pmap.dtype == torch.float32
    assert pmap.sum(-1).tolist() == [4.0, 1.0]
    assert torch.allclose(enc.positive_map_normalized.sum(-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize(
    ("start", "end"), [(-1, 3), (0, 26), (5, 5), (6, 2)]
)
def test_strict_spans_reject_out_of_range(start: int, end: int) -> None:
    with pytest.raises(GlipError, match="span"):
        encode_prompt("person. bicycle. car. dog", [Phrase("x", start, end)])


def test_lenient_span_past_end_is_dropped_not_raised() -> None:
    enc = encode_prompt("person. bicycle. car. dog", [Phrase("far", 30, 40)], strict_spans=False)
    assert enc.token_spans == [[]]


@pytest.mark.parametrize("caption", ["", "   \n"])
def test_empty_caption_is_rejected(caption: str) -> None:
    with pytest.raises(GlipError, match="caption is empty"):
        encode_prompt(caption, [])


def test_long_caption_is_truncated_and_late_phrases_dropped() -> None:
    words = [f"w{i}" for i in range(300)]
    caption, phrases = detection_caption(words)
    enc = encode_prompt(caption, phrases)
    assert enc.truncated
    assert enc.num_tokens == 256 and enc.input_ids.shape == (1, 256)
    assert enc.token_spans[0] != []
    assert enc.token_spans[-1] == []
    assert max(t for span in enc.token_spans for t in span) <= 254  # 255 is [SEP]


def test_short_caption_padding_and_shapes() -> None:
    enc = encode_prompt("a dog", [Phrase("a dog", 0, 5)], max_length=16)
    assert enc.input_ids.shape == enc.attention_mask.shape == enc.token_type_ids.shape == (1, 16)
    assert enc.input_ids.dtype == torch.long
    assert enc.num_tokens == 4 and not enc.truncated
    assert enc.attention_mask[0].tolist() == [1] * 4 + [0] * 12
    assert enc.positive_map.shape == (1, 16)
