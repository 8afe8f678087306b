"""`glip ground` / `GLIPPredictor.ground`: phrase parsing, overlapping phrases against the
official grounding outputs, bracket markup, top-k, batching, JSON schema and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from glipcli.cli.main import main
from glipcli.errors import GlipError
from glipcli.grounding import grounding_phrases, locate_phrase, parse_markup, parse_span, top_boxes_per_phrase
from glipcli.predictor import GLIPPredictor
from glipcli.prompts.caption import Phrase
from golden_utils import golden_model, load

CAPTION = "a woman holding a cup of coffee"
# The golden grounding case: overlapping phrases "a cup of coffee" [16, 31) and "coffee" [25, 31).
GOLDEN_SPANS = [(0, 7), (16, 31), (25, 31)]


# -- phrase parsing -------------------------------------------------------------------------------
def test_markup_removes_brackets_and_records_nested_spans():
    caption, phrases = parse_markup("[a woman] holding [a cup of [coffee]]")
    assert caption == CAPTION
    assert [(p.text, p.start, p.end) for p in phrases] == [
        ("a woman", 0, 7), ("a cup of coffee", 16, 31), ("coffee", 25, 31)]
    for p in phrases:
        assert caption[p.start:p.end] == p.text


def test_markup_strips_spaces_inside_brackets():
    caption, (phrase,) = parse_markup("look at [ the dog ] now")
    assert caption == "look at  the dog  now"
    assert caption[phrase.start:phrase.end] == "the dog" == phrase.text


@pytest.mark.parametrize("caption, needle", [("[a woman holding", "not closed"),
                                             ("a woman] holding", "closes no"),
                                             ("a [] woman", "empty phrase")])
def test_bad_markup_is_named(caption, needle):
    with pytest.raises(GlipError, match=needle):
        parse_markup(caption)


def test_locate_phrase_prefers_whole_words_and_falls_back_to_case_insensitive():
    assert locate_phrase("a cat on a catamaran", "cat") == Phrase("cat", 2, 5)
    assert locate_phrase("A Woman holding tea", "a woman") == Phrase("A Woman", 0, 7)


def test_ambiguous_phrase_lists_the_spans_to_choose_from():
    with pytest.raises(GlipError) as info:
        locate_phrase("a dog chases a dog", "a dog")
    message = str(info.value)
    assert "occurs 2 times" in message and "--phrase-span 0:5 or 13:18" in message


def test_missing_phrase_is_an_error():
    with pytest.raises(GlipError, match="'a horse' is not in the caption"):
        locate_phrase(CAPTION, "a horse")


def test_grounding_phrases_combines_markup_texts_and_spans():
    caption, phrases = grounding_phrases("[a woman] holding a cup of coffee",
                                         ["a cup of coffee", (25, 31), "a woman"])
    assert caption == CAPTION
    # "a woman" given twice (markup and text) is kept once; order: markup, then as given.
    assert [(p.start, p.end) for p in phrases] == [(0, 7), (16, 31), (25, 31)]
    assert [p.text for p in phrases] == ["a woman", "a cup of coffee", "coffee"]


def test_no_phrase_grounds_the_whole_caption():
    caption, (phrase,) = grounding_phrases("  the red car on the left ")
    assert (phrase.text, caption[phrase.start:phrase.end]) == ("the red car on the left",) * 2


def test_markup_can_be_turned_off():
    caption, (phrase,) = grounding_phrases("the [sic] word", ["word"], markup=False)
    assert caption == "the [sic] word" and (phrase.start, phrase.end) == (10, 14)


@pytest.mark.parametrize("text, expected", [("16:31", (16, 31)), (" 0 : 7 ", (0, 7))])
def test_parse_span(text, expected):
    assert parse_span(text) == expected


@pytest.mark.parametrize("spec", ["16-31", "a:b", "16:"])
def test_bad_span_text(spec):
    with pytest.raises(GlipError, match="START:END"):
        parse_span(spec)


@pytest.mark.parametrize("span", [(5, 5), (20, 40), (7, 8)])
def test_bad_spans_are_rejected(span):
    with pytest.raises(GlipError, match="span"):
        grounding_phrases(CAPTION, [span])


def test_top_boxes_per_phrase_selects_by_label_score_and_threshold():
    boxes = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    scores = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.1, 0.6])
    labels = torch.tensor([1, 2, 1, 1, 2, 3])
    out = top_boxes_per_phrase(boxes, scores, labels, num_phrases=4, top_k=2, box_threshold=0.3)
    assert [[b.score for b in phrase] for phrase in out] == [
        [pytest.approx(0.7), pytest.approx(0.5)], [pytest.approx(0.9)], [pytest.approx(0.6)], []]
    assert out[0][0].box_xyxy == [12.0, 13.0, 14.0, 15.0]


# -- against the official grounding outputs -------------------------------------------------------
@pytest.fixture(scope="module")
def predictor(golden_dir) -> GLIPPredictor:
    return GLIPPredictor(golden_model(str(golden_dir / "tiny")))


@pytest.fixture(scope="module")
def grounded(predictor, golden_dir):
    """Overlapping phrases, given as texts; top 5 boxes each."""
    (result,) = predictor.ground(golden_dir / "tiny" / "image.png", CAPTION,
                                 ["a woman", "a cup of coffee", "coffee"], top_k=5)
    return result


def test_overlapping_phrases_match_the_official_grounding(grounded, golden_dir):
    ref = load(str(golden_dir / "tiny" / "outputs_grounding.safetensors"))
    assert grounded.caption == CAPTION
    assert [(p.text, tuple(p.span)) for p in grounded.phrases] == list(
        zip(["a woman", "a cup of coffee", "coffee"], GOLDEN_SPANS))
    for label, phrase in enumerate(grounded.phrases, start=1):
        assert 1 <= len(phrase.boxes) <= 5
        scores = [b.score for b in phrase.boxes]
        assert scores == sorted(scores, reverse=True)
        # Per-phrase NMS never removes a phrase's best candidate: the top box is the official
        # pre-NMS candidate of that phrase with the highest score.
        mine = ref["prenms_labels"] == label
        best = int(torch.argmax(torch.where(mine, ref["prenms_scores"], -1.0)))
        assert phrase.boxes[0].score == pytest.approx(float(ref["prenms_scores"][best]), abs=1e-5)
        resized_to_original = torch.tensor([600 / 504, 400 / 336, 600 / 504, 400 / 336])
        expected_box = ref["prenms_boxes"][best] * resized_to_original
        assert torch.allclose(torch.tensor(phrase.boxes[0].box_xyxy), expected_box, atol=1e-2)
    # "coffee" has 99 of the official top 100: its 5 best boxes are the official final ones.
    final = ref["final_labels"] == 3
    ref_scores = ref["final_scores"][final].sort(descending=True).values[:5]
    assert torch.allclose(torch.tensor([b.score for b in grounded.phrases[2].boxes]), ref_scores, atol=1e-5)


def test_a_phrase_is_not_crowded_out_by_the_detection_cap(grounded, golden_dir):
    ref = load(str(golden_dir / "tiny" / "outputs_grounding.safetensors"))
    assert not (ref["final_labels"] == 2).any(), "the official 100-cap leaves 'a cup of coffee' nothing"
    assert grounded.phrases[1].boxes, "grounding still reports its best box"


def test_markup_spans_and_texts_give_the_same_result(predictor, grounded, golden_dir):
    image = golden_dir / "tiny" / "image.png"
    (by_markup,) = predictor.ground(image, "[a woman] holding [a cup of [coffee]]", top_k=5)
    (by_span,) = predictor.ground(image, CAPTION, [(0, 7), (16, 31), Phrase("coffee", 25, 31)], top_k=5)
    assert by_markup.to_dict() == grounded.to_dict() == by_span.to_dict()


def test_box_threshold_and_top_k_apply_per_phrase(predictor, grounded, golden_dir):
    (top1,) = predictor.ground(golden_dir / "tiny" / "image.png", CAPTION,
                               ["a woman", "a cup of coffee", "coffee"], top_k=1, box_threshold=0.6)
    for full, cut in zip(grounded.phrases, top1.phrases):
        expected = [b for b in full.boxes[:1] if b.score >= 0.6]
        assert cut.boxes == expected
    assert top1.phrases[1].boxes == []  # its best score, 0.59, is under the threshold


def test_batched_grounding_matches_one_by_one(predictor, golden_dir):
    image = Image.open(golden_dir / "tiny" / "image.png").convert("RGB")
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    phrases = ["a woman", "a cup of coffee"]
    alone = [predictor.ground(im, CAPTION, phrases, top_k=3)[0] for im in (image, flipped)]
    batched = predictor.ground([image, flipped], CAPTION, phrases, top_k=3, batch_size=2)
    for a, b in zip(alone, batched):
        for pa, pb in zip(a.phrases, b.phrases):
            assert len(pa.boxes) == len(pb.boxes)
            for x, y in zip(pa.boxes, pb.boxes):
                assert x.score == pytest.approx(y.score, abs=1e-5)
                assert x.box_xyxy == pytest.approx(y.box_xyxy, abs=1e-2)
    # The two images really are different inputs: their best "a woman" boxes are mirrored.
    x0, _, x1, _ = alone[0].phrases[0].boxes[0].box_xyxy
    fx0, _, fx1, _ = alone[1].phrases[0].boxes[0].box_xyxy
    assert (fx0, fx1) != (x0, x1)


def test_overlong_caption_is_refused(predictor):
    caption = " ".join(["word"] * 300)
    with pytest.raises(GlipError, match="longer than the model's 256 tokens"):
        predictor.encode_grounding(caption, [(0, 4)])


# -- the command ------------------------------------------------------------------------------
def _golden_args(golden_dir: Path) -> list[str]:
    tiny = golden_dir / "tiny"
    return ["--config", str(tiny / "config.yaml"), "--weights", str(tiny / "weights.safetensors")]


def test_ground_command_writes_the_documented_schema(golden_dir, grounded, tmp_path, capsys):
    out = tmp_path / "ground.json"
    code = main(["ground", str(golden_dir / "tiny" / "image.png"), "[a woman] holding [a cup of [coffee]]",
                 *_golden_args(golden_dir), "--top-k", "5", "--json", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    (result,) = json.loads(out.read_text())
    assert set(result) == {"image", "width", "height", "caption", "phrases"}
    assert (result["width"], result["height"], result["caption"]) == (600, 400, CAPTION)
    for phrase in result["phrases"]:
        assert set(phrase) == {"text", "span", "boxes"}
        assert all(set(box) == {"box_xyxy", "score"} for box in phrase["boxes"])
    expected = grounded.to_dict()
    assert [p["span"] for p in result["phrases"]] == [p["span"] for p in expected["phrases"]]
    for got, want in zip(result["phrases"], expected["phrases"]):
        assert [b["score"] for b in got["boxes"]] == pytest.approx([b["score"] for b in want["boxes"]], abs=1e-6)
    assert "a cup of coffee" in capsys.readouterr().out  # the terminal table


def test_ground_command_with_phrase_options(golden_dir, tmp_path, capsys):
    out = tmp_path / "ground.json"
    code = main(["ground", str(golden_dir / "tiny" / "image.png"), CAPTION, "--phrase", "a woman",
                 "--phrase-span", "25:31", *_golden_args(golden_dir), "--json", str(out), "-q"])
    assert code == 0
    (result,) = json.loads(out.read_text())
    assert [(p["text"], p["span"], len(p["boxes"])) for p in result["phrases"]] == [
        ("a woman", [0, 7], 1), ("coffee", [25, 31], 1)]
    assert capsys.readouterr().out == ""  # --quiet: no table


@pytest.mark.parametrize("args, needle", [
    (["a woman holding tea", "--phrase", "a horse"], "'a horse' is not in the caption"),
    (["a dog chases a dog", "--phrase", "a dog"], "--phrase-span 0:5 or 13:18"),
    (["[a woman holding tea"], "not closed"),
    (["a woman", "--phrase-span", "3:99"], "not a non-empty range"),
])
def test_ground_phrase_errors_are_one_line(golden_dir, tmp_path, capsys, args, needle):
    code = main(["ground", str(golden_dir / "tiny" / "image.png"), *args, *_golden_args(golden_dir)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
