"""Long class lists: chunk plans, merging chunk detections, and chunked runs of the tiny model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glipcli.chunked_detection import detect_with_spec, merge_chunk_detections
from glipcli.errors import GlipError
from glipcli.modeling.postprocess import Detections
from glipcli.predictor import GLIPPredictor
from glipcli.prompts.chunking import count_tokens, plan_chunks
from glipcli.prompts.prompt_file import ClassPrompt, PromptSpec
from glipcli.prompts.tokenizer import load_tokenizer
from golden_utils import golden_model

NAMES = ["person", "bicycle", "car", "dog"]


@pytest.fixture(scope="module")
def lvis(shared_dir) -> PromptSpec:
    spec = PromptSpec.from_classes_file(shared_dir / "data" / "lvis_v1_class_names.txt")
    assert len(spec.classes) == 1203
    return spec


def _check_plan(plan, max_tokens):
    """Every class in exactly one chunk, in order; every chunk fits; each phrase's characters
    are its text and its tokens are the tokenization of that text."""
    tokenizer = load_tokenizer()
    spec = plan.spec
    assert [i for chunk in plan.chunks for i in chunk.class_indices] == list(range(len(spec.classes)))
    for chunk in plan.chunks:
        prompt = chunk.prompt
        assert not prompt.truncated
        assert prompt.num_tokens == count_tokens(prompt.caption) <= max_tokens
        assert len(prompt.phrases) == chunk.num_classes + len(spec.suppress)
        pieces = tokenizer.convert_ids_to_tokens(prompt.input_ids[0].tolist())
        texts = [spec.classes[i].grounded_text for i in chunk.class_indices] + spec.suppress
        for phrase, tokens, text in zip(prompt.phrases, prompt.token_spans, texts, strict=True):
            assert prompt.caption[phrase.start:phrase.end] == text
            assert [pieces[t] for t in tokens] == tokenizer.tokenize(text)


# ---------------------------------------------------------------- plans


def test_lvis_chunks_reach_every_class(lvis):
    plan = plan_chunks(lvis, max_tokens=256)
    assert len(plan.chunks) > 1
    _check_plan(plan, 256)
    # Greedy packing: no chunk could have taken the next class.
    for chunk, following in zip(plan.chunks, plan.chunks[1:]):
        grown = lvis.subset(chunk.class_indices + following.class_indices[:1]).caption().caption
        assert count_tokens(grown) > 256


def test_lvis_chunks_with_suppression_and_clean_names(shared_dir):
    spec = PromptSpec.from_classes_file(shared_dir / "data" / "lvis_v1_class_names.txt", clean_names=True)
    spec = PromptSpec(spec.classes, suppress=["a reflection", "picture of an animal"])
    plan = plan_chunks(spec, max_tokens=256)
    _check_plan(plan, 256)
    for chunk in plan.chunks:
        assert chunk.prompt.caption.endswith(". a reflection. picture of an animal")
        assert [chunk.phrase_class(p) for p in range(1, len(chunk.prompt.phrases) + 1)][-2:] == [None, None]


def test_forced_chunk_size_caps_classes_per_chunk():
    spec = PromptSpec.from_names(["a", "b", "c", "d", "e"])
    assert [c.class_indices for c in plan_chunks(spec, chunk_size=2).chunks] == [[0, 1], [2, 3], [4]]
    assert [c.prompt.caption for c in plan_chunks(spec, chunk_size=2).chunks] == ["a. b", "c. d", "e"]
    assert len(plan_chunks(spec).chunks) == 1
    # A chunk size that would overflow the budget still gives captions that fit.
    plan = plan_chunks(spec, max_tokens=5, chunk_size=3)
    assert [c.class_indices for c in plan.chunks] == [[0, 1], [2, 3], [4]]
    _check_plan(plan, 5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(GlipError, match="chunk size must be a whole number"):
            plan_chunks(spec, chunk_size=bad)


def test_a_class_that_cannot_fit_is_named():
    spec = PromptSpec([ClassPrompt("short"), ClassPrompt("long", suffix=" with" * 300)])
    with pytest.raises(GlipError, match=r"class 'long' needs 303 tokens, more than the model's 256-token"):
        plan_chunks(spec)
    spec = PromptSpec.from_names(["cat", "dog"], suppress=["one two three"])
    with pytest.raises(GlipError, match="class 'cat' needs 7 tokens with the 1 suppression phrase"):
        plan_chunks(spec, max_tokens=6)


def test_a_class_without_tokens_is_refused():
    with pytest.raises(GlipError, match=r"class '\\u200b': its text .* maps to no token"):
        plan_chunks(PromptSpec.from_names(["cat", "\u200b"]))


_words = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-'&/éü"), min_size=1, max_size=9)
_texts = st.lists(_words, min_size=1, max_size=3).map(" ".join)


@settings(max_examples=40, deadline=None)
@given(st.lists(_texts, min_size=1, max_size=12, unique=True), st.sampled_from([None, 1, 3]),
       st.sampled_from([12, 24, 256]))
def test_spans_map_back_to_their_text(names, chunk_size, max_tokens):
    spec = PromptSpec.from_names(names)
    if max(count_tokens(n) for n in names) > max_tokens:
        with pytest.raises(GlipError, match="needs"):
            plan_chunks(spec, max_tokens=max_tokens, chunk_size=chunk_size)
        return
    plan = plan_chunks(spec, max_tokens=max_tokens, chunk_size=chunk_size)
    _check_plan(plan, max_tokens)
    # Token offsets: the phrase's tokens cover exactly its characters.
    for chunk in plan.chunks:
        enc = load_tokenizer()(chunk.prompt.caption, return_offsets_mapping=True)
        for phrase, tokens in zip(chunk.prompt.phrases, chunk.prompt.token_spans):
            assert enc["offset_mapping"][tokens[0]][0] == phrase.start
            assert enc["offset_mapping"][tokens[-1]][1] == phrase.end


# ---------------------------------------------------------------- merging


def _dets(boxes, scores, labels) -> Detections:
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                      torch.tensor(scores, dtype=torch.float32), torch.tensor(labels, dtype=torch.long))


def _merge(per_chunk, plan, **kwargs):
    merged = merge_chunk_detections(per_chunk, plan, **kwargs)
    return sorted(zip(merged.labels.tolist(), [round(s, 4) for s in merged.scores.tolist()]))


def test_merge_maps_labels_to_global_classes():
    plan = plan_chunks(PromptSpec.from_names(NAMES), chunk_size=2)
    first = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [2, 1])  # bicycle, person
    second = _dets([[0, 0, 10, 10], [40, 40, 50, 50]], [0.7, 0.6], [1, 2])  # car, dog
    assert _merge([first, second], plan) == [(1, 0.8), (2, 0.9), (3, 0.7), (4, 0.6)]
    # The same box under different classes survives NMS (class-aware); a same-class duplicate does not.
    dup = _dets([[0, 0, 10, 10], [0, 0, 10, 11]], [0.9, 0.5], [1, 1])
    assert _merge([dup, second], plan) == [(1, 0.9), (3, 0.7), (4, 0.6)]
    with pytest.raises(ValueError, match="2 chunks"):
        merge_chunk_detections([first], plan)


def test_merge_applies_per_class_thresholds_and_the_cap():
    spec = PromptSpec([ClassPrompt("a", threshold=0.5), ClassPrompt("b"), ClassPrompt("c", threshold=0.0)])
    plan = plan_chunks(spec, chunk_size=1)
    chunks = [_dets([[0, 0, 5, 5], [10, 10, 15, 15]], [0.49, 0.5], [1, 1]),
              _dets([[0, 0, 5, 5], [10, 10, 15, 15]], [0.3, 0.2], [1, 1]),
              _dets([[0, 0, 5, 5]], [0.01], [1])]
    assert _merge(chunks, plan, box_threshold=0.25) == [(1, 0.5), (2, 0.3), (3, 0.01)]
    assert _merge(chunks, plan, box_threshold=0.0, max_detections=2) == [(1, 0.5), (2, 0.3)]


def test_merge_never_reports_suppression_phrases():
    plan = plan_chunks(PromptSpec.from_names(["cat", "dog"], suppress=["toy"]), chunk_size=1)
    assert [c.prompt.caption for c in plan.chunks] == ["cat. toy", "dog. toy"]
    cat = _dets([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]], [0.4, 0.4, 0.6], [1, 1, 2])
    dog = _dets([[50, 50, 60, 60], [100, 100, 110, 110]], [0.5, 0.3], [1, 2])
    # The cat box that a higher-scoring "toy" box overlaps is dropped; the other cat stays.
    assert _merge([cat, dog], plan) == [(1, 0.4), (2, 0.5)]
    kept = merge_chunk_detections([cat, dog], plan)
    assert kept.boxes[kept.labels == 1].tolist() == [[50, 50, 60, 60]]
    # Without the overlap rule only the suppression detections themselves go.
    assert _merge([cat, dog], plan, suppress_iou=None) == [(1, 0.4), (1, 0.4), (2, 0.5)]
    # A lower-scoring suppression box does not take a class box away.
    low = _dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.4, 0.3], [1, 2])
    assert _merge([low, dog], plan) == [(1, 0.4), (2, 0.5)]


def test_lvis_every_class_survives_the_merge(lvis):
    plan = plan_chunks(PromptSpec(lvis.classes, suppress=["a reflection"]))
    per_chunk = []
    for chunk in plan.chunks:
        n = len(chunk.prompt.phrases)
        boxes = [[10.0 * p, 0, 10.0 * p + 5, 5] for p in range(n)]
        per_chunk.append(_dets(boxes, [0.5] * n, list(range(1, n + 1))))
    merged = merge_chunk_detections(per_chunk, plan, max_detections=2000)
    assert sorted(merged.labels.tolist()) == list(range(1, 1204))


# ---------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def predictor(golden_dir) -> GLIPPredictor:
    predictor = GLIPPredictor(golden_model(str(golden_dir / "tiny")))
    # Smaller test-time images keep each forward pass short; the model is unchanged.
    cfg = predictor.cfg
    predictor.cfg = dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, min_size=160, max_size=256))
    return predictor


@pytest.fixture(scope="module")
def image(golden_dir) -> Path:
    return golden_dir / "tiny" / "image.png"


@pytest.fixture(scope="module")
def unchunked(predictor, image):
    return predictor.predict(image, ". ".join(NAMES))[0]


def _rows(result):
    return [(d.label, d.phrase_index, d.score, d.box_xyxy) for d in result.detections]


def test_one_chunk_equals_predict(predictor, image, unchunked):
    assert len(unchunked.detections) > 10
    assert detect_with_spec(predictor, image, PromptSpec.from_names(NAMES))[0] == unchunked


def _sharing(predictor: GLIPPredictor, prompt_batch_size: int | None) -> GLIPPredictor:
    """The same model and test size, reading `prompt_batch_size` chunks per head call."""
    other = GLIPPredictor(predictor.model, prompt_batch_size=prompt_batch_size)
    other.cfg = predictor.cfg
    return other


def _assert_same_detections(got, expected):
    """The same detections (labels, order by score) up to float rounding: a batch of chunks runs
    through other kernel shapes than one chunk alone, which may round differently."""
    assert [(d.label, d.phrase_index) for d in got.detections] == [(d.label, d.phrase_index)
                                                                    for d in expected.detections]
    for a, b in zip(got.detections, expected.detections):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert a.box_xyxy == pytest.approx(b.box_xyxy, abs=1e-3)


def test_forced_chunks_equal_the_runs_of_their_class_lists(predictor, image):
    """Each chunk is an ordinary prompt: the chunked run is the per-image top-100 (the model's
    cap) of what `predict` gives for each chunk's class list, labels mapped back to the list
    (one chunk per head call: exactly; see the next test for batches of chunks)."""
    result = detect_with_spec(_sharing(predictor, 1), image, PromptSpec.from_names(NAMES), chunk_size=2)[0]
    assert result.caption == "person. bicycle. car. dog"
    union = []
    for offset, names in ((0, NAMES[:2]), (2, NAMES[2:])):
        for d in predictor.predict(image, names)[0].detections:
            union.append((d.label, d.phrase_index + offset, d.score, d.box_xyxy))
    assert {row[0] for row in union} == set(NAMES)
    union.sort(key=lambda row: -row[2])
    cap = predictor.cfg.postprocess.max_detections
    assert len(union) > cap
    assert sorted(_rows(result)) == sorted(union[:cap])
    assert [row[2] for row in _rows(result)] == sorted((row[2] for row in union[:cap]), reverse=True)


def test_a_batch_of_chunks_equals_one_chunk_after_another(predictor, image):
    """Chunks of different token lengths read by the head as one batch (the image features
    shared, the captions padded) give the detections of running them one after another."""
    names = NAMES + ["traffic light", "fire hydrant", "a very small brown bird", "cat", "stop sign"]
    spec = PromptSpec.from_names(names)
    plan = plan_chunks(spec, chunk_size=2)
    assert len({chunk.prompt.num_tokens for chunk in plan.chunks}) > 1  # padding is exercised
    sequential = detect_with_spec(_sharing(predictor, 1), [image, image], plan, batch_size=2)
    assert len({d.label for d in sequential[0].detections}) > 3  # several chunks contribute
    for size in (2, 3, len(plan.chunks), None):
        batched = detect_with_spec(_sharing(predictor, size), [image, image], plan, batch_size=2)
        for got, expected in zip(batched, sequential, strict=True):
            _assert_same_detections(got, expected)
    with pytest.raises(GlipError, match="prompt batch size must be at least 1"):
        _sharing(predictor, 0)


def test_per_class_thresholds(predictor, image, unchunked):
    spec = PromptSpec([ClassPrompt("person"), ClassPrompt("bicycle", threshold=0.6),
                       ClassPrompt("car", threshold=0.0), ClassPrompt("dog", threshold=1.0)])
    result = detect_with_spec(predictor, image, spec, box_threshold=0.5)[0]
    limits = {"person": 0.5, "bicycle": 0.6, "car": 0.0, "dog": 1.0}
    expected = [row for row in _rows(unchunked) if row[2] >= limits[row[0]]]
    assert {row[0] for row in expected} == {"bicycle", "car"}  # the thresholds do select something
    assert any(row[0] == "bicycle" and row[2] < 0.6 for row in _rows(unchunked))
    assert _rows(result) == expected


def test_suppression_phrases_are_encoded_but_never_reported(predictor, image):
    spec = PromptSpec.from_names(["person", "car"], suppress=["bicycle", "dog"])
    plan = plan_chunks(spec)
    (chunk,) = plan.chunks
    assert chunk.prompt.caption == "person. car. bicycle. dog"
    # The suppression phrases are scored like classes (labels 3 and 4 of the raw detections) ...
    from glipcli.data.transforms import batch_images, load_image, preprocess_image

    tensor, size = preprocess_image(load_image(image), predictor.cfg.input)
    batch, sizes = batch_images([tensor], predictor.cfg.input.size_divisible)
    raw = predictor.detect_tensor(batch, sizes, chunk.prompt)[0]
    assert {3, 4} <= set(raw.labels.tolist())
    # ... and never reported.
    result = detect_with_spec(predictor, image, plan)[0]
    assert result.caption == "person. car. bicycle. dog"
    assert result.detections and {d.label for d in result.detections} <= {"person", "car"}
    assert {d.phrase_index for d in result.detections} <= {0, 1}


def test_each_chunk_is_encoded_once_across_images(predictor, image, monkeypatch):
    fresh = GLIPPredictor(predictor.model)
    fresh.cfg = predictor.cfg
    calls = []
    encode = fresh.model.encode_text
    monkeypatch.setattr(fresh.model, "encode_text", lambda *args: calls.append(1) or encode(*args))
    results = detect_with_spec(fresh, [image, image], PromptSpec.from_names(NAMES), chunk_size=3)
    assert len(calls) == 2
    assert len(results) == 2 and results[0] == results[1]


def test_bad_batch_size_and_oversized_plan(predictor, image):
    with pytest.raises(GlipError, match="batch size"):
        detect_with_spec(predictor, image, PromptSpec.from_names(NAMES), batch_size=0)
    plan = plan_chunks(PromptSpec.from_names(NAMES), max_tokens=512)
    with pytest.raises(GlipError, match="allows 512 tokens but the model reads 256"):
        detect_with_spec(predictor, image, plan)


@pytest.mark.slow
def test_lvis_runs_chunked_on_the_tiny_model(predictor, image, lvis):
    plan = plan_chunks(lvis, max_tokens=predictor.cfg.language.max_query_len)
    (result,) = detect_with_spec(predictor, image, plan)
    assert 0 < len(result.detections) <= predictor.cfg.postprocess.max_detections
    names = lvis.names
    assert all(d.label == names[d.phrase_index] for d in result.detections)
    assert len({d.phrase_index for d in result.detections}) > 1


def test_unreadable_images_are_reported_or_skipped(predictor, image, tmp_path):
    from glipcli.chunked_detection import iter_detect_with_spec
    from glipcli.data.batching import ImageFailure

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    spec = PromptSpec.from_names(NAMES)
    items = list(iter_detect_with_spec(predictor, [bad, image], spec, skip_errors=True))
    failures = [item for item in items if isinstance(item, ImageFailure)]
    assert [(f.index, f.source) for f in failures] == [(0, str(bad))]
    ((prepared, result),) = [item for item in items if not isinstance(item, ImageFailure)]
    assert prepared.index == 1 and result.image == str(image) and result.detections
    with pytest.raises(GlipError, match="bad.png"):
        detect_with_spec(predictor, [bad, image], spec)
