"""Bad-input matrix, prompts: empty, separators only, whitespace and duplicate names, non-ASCII
and emoji, phrase spans outside the caption, too many tokens; fuzzing of the parser and encoder.

Rows already covered elsewhere (not repeated here): `-p " . "` in a fresh process
(tests/test_cli.py); every malformed YAML prompt file (tests/test_prompt_files.py); a phrase that
is absent or ambiguous, unclosed markup and the span 3:99 through `glip ground`
(tests/test_ground.py); a long classes file chunked by `glip detect` and a class too long for one
caption (tests/test_batch_outputs.py, tests/test_prompt_cli.py); spans of ASCII-ish class lists
mapping back to their text (tests/test_chunking.py).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glipcli.errors import GlipError
from glipcli.grounding import grounding_phrases
from glipcli.prompts.chunking import plan_chunks
from glipcli.prompts.encoding import encode_prompt
from glipcli.prompts.prompt_file import PromptSpec
from glipcli.prompts.tokenizer import load_tokenizer
from reliability_utils import assert_one_line_error, glip, golden_args


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("prompt") / "photo.png"
    Image.new("RGB", (48, 32), (90, 140, 60)).save(path)
    return path


# -- prompts that name no class: refused before any model is loaded --------------------------------
EMPTY = {
    "empty string": (["-p", ""], "empty prompt"),
    "only separators": (["-p", "..."], "empty prompt"),
    "separators and spaces, repeated": (["-p", " . ", "-p", ".  .\t."], "empty prompt"),
    "only whitespace": (["-p", " \t\n "], "empty prompt"),
}


@pytest.mark.parametrize("case", list(EMPTY))
def test_empty_prompts_are_one_error_line(image, capsys, case):
    args, needle = EMPTY[case]
    # no model options: the prompt is checked before the default model would be downloaded
    code, _, err = glip(capsys, "detect", image, *args)
    assert_one_line_error(code, err, needle)


def test_classes_file_with_only_comments_and_blank_lines(image, tmp_path, capsys):
    path = tmp_path / "names.txt"
    path.write_text("# my classes\n\n   \n# (none yet)\n")
    code, _, err = glip(capsys, "detect", image, "--classes-file", path)
    assert_one_line_error(code, err, str(path), "no class names")


# -- whitespace and duplicates ---------------------------------------------------------------------
def test_names_are_stripped_and_separator_runs_ignored(capsys):
    code, out, _ = glip(capsys, "prompt", "show", "-p", "  dog  ..  hot   dog .", "-p", "\tcat ")
    assert code == 0
    assert "'dog. hot   dog. cat'" in out  # each name stripped; inner spaces kept verbatim


@pytest.mark.parametrize("args", [["-p", "dog. cat. dog"], ["-p", "dog", "-p", " dog "]])
def test_duplicate_names_are_refused(capsys, args):
    code, _, err = glip(capsys, "prompt", "show", *args)
    assert_one_line_error(code, err, "duplicate class name 'dog'")


def test_duplicate_line_in_a_classes_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "names.txt"
    path.write_text("dog\ncat\ndog\n")
    code, _, err = glip(capsys, "prompt", "show", "--classes-file", path)
    assert_one_line_error(code, err, str(path), "duplicate class name 'dog' (classes #1 and #3)")


# -- non-ASCII and emoji ---------------------------------------------------------------------------
def test_non_ascii_and_emoji_names_are_detected_and_labelled_verbatim(golden_dir, image, tmp_path, capsys):
    names = ["café au lait", "🐶", "猫", "Ærø ferry", "naïve—robot"]
    out = tmp_path / "out.json"
    code, _, err = glip(capsys, "detect", image, *golden_args(golden_dir), "-p", ". ".join(names),
                        "--box-threshold", "0", "--json", out, "-q")
    assert code == 0, err
    (result,) = json.loads(out.read_text(encoding="utf-8"))
    assert result["caption"] == ". ".join(names)
    labels = {d["label"] for d in result["detections"]}
    assert labels <= set(names) and len(labels) > 1
    assert all(d["label"] == names[d["phrase_index"]] for d in result["detections"])


@pytest.mark.parametrize("name", ["\u0301", "\u200b", "\u0301\u0301\u200b"])
def test_a_name_with_no_token_is_refused(capsys, name):
    """A combining accent or a zero-width space alone is not whitespace to Python, but the
    tokenizer drops it: such a class could never be detected."""
    code, _, err = glip(capsys, "prompt", "show", "-p", f"dog. {name}")
    assert_one_line_error(code, err, "maps to no token")


# -- grounding spans and length --------------------------------------------------------------------
@pytest.mark.parametrize("caption, span, needle", [
    ("a dog", "5:5", "not a non-empty range inside the 5-character caption"),
    ("a dog", "2:6", "not a non-empty range inside the 5-character caption"),
    ("a dog", "-1:3", "is not START:END"),
    ("a  dog", "1:3", "holds only spaces"),
    ("[a dog] runs", "9:14", "not a non-empty range inside the 10-character caption"),  # brackets removed first
])
def test_phrase_spans_outside_the_caption(golden_dir, image, capsys, caption, span, needle):
    code, _, err = glip(capsys, "ground", image, caption, "--phrase-span", span, *golden_args(golden_dir))
    assert_one_line_error(code, err, needle)


def test_emoji_phrase_is_grounded_on_its_own_span(golden_dir, image, tmp_path, capsys):
    out = tmp_path / "ground.json"
    code, _, err = glip(capsys, "ground", image, "a 🐶 next to a 猫", "--phrase", "🐶", "--phrase", "猫",
                        *golden_args(golden_dir), "--json", out, "-q")
    assert code == 0, err
    (result,) = json.loads(out.read_text(encoding="utf-8"))
    assert [(p["text"], p["span"]) for p in result["phrases"]] == [("🐶", [2, 3]), ("猫", [14, 15])]
    assert all(len(p["boxes"]) == 1 for p in result["phrases"])


def test_overlong_grounding_caption_says_how_long_it_is(golden_dir, image, capsys):
    caption = "[a dog] " + " ".join(["and another dog"] * 100)
    code, _, err = glip(capsys, "ground", image, caption, *golden_args(golden_dir))
    assert_one_line_error(code, err, "longer than the model's 256 tokens (304 tokens", "cannot be split")


def test_long_class_list_on_the_command_line_is_chunked(golden_dir, image, tmp_path, capsys):
    names = [f"object number {i}" for i in range(120)]  # ~480 tokens: two captions
    out = tmp_path / "out.json"
    code, _, err = glip(capsys, "detect", image, *golden_args(golden_dir), "-p", ". ".join(names),
                        "--box-threshold", "0", "--json", out, "-q")
    assert code == 0, err
    (result,) = json.loads(out.read_text())
    assert {d["phrase_index"] for d in result["detections"]} & set(range(60, 120)), "the second chunk is used"
    assert all(d["label"] == names[d["phrase_index"]] for d in result["detections"])


# -- fuzz ------------------------------------------------------------------------------------------
_any_char = st.characters(blacklist_categories=("Cs",))
_tricky = st.sampled_from(list(". ,\t\n  \u200b\u0301\u00a0🐶猫é#:[]"))
_piece = st.text(st.one_of(_any_char, _tricky), max_size=14)


def _token_chars(caption: str) -> list[tuple[int, int]]:
    return load_tokenizer()(caption, return_offsets_mapping=True, truncation=False)["offset_mapping"]


def _check_maps_back(prompt) -> None:
    """Each phrase's span holds its text, and its tokens are tokens of those characters."""
    offsets = _token_chars(prompt.caption)
    for phrase, tokens in zip(prompt.phrases, prompt.token_spans, strict=True):
        assert prompt.caption[phrase.start:phrase.end] == phrase.text
        if tokens:
            assert tokens == list(range(tokens[0], tokens[-1] + 1))
            first, last = offsets[tokens[0]], offsets[tokens[-1]]
            assert first[0] < phrase.end and last[1] > phrase.start, (prompt.caption, phrase, first, last)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_piece, max_size=6), st.sampled_from([None, 1, 2]), st.sampled_from([6, 16, 256]))
def test_fuzz_class_prompts_parse_and_encode(prompts, chunk_size, max_tokens):
    """`-p` values of any Unicode: only GlipError, and every class phrase that is encoded maps
    back to its own text and to tokens of it."""
    try:
        spec = PromptSpec.from_prompts(prompts)
        plan = plan_chunks(spec, max_tokens=max_tokens, chunk_size=chunk_size)
    except GlipError as exc:
        assert "\n" not in str(exc)
        return
    for chunk in plan.chunks:
        assert chunk.prompt.num_tokens <= max_tokens and not chunk.prompt.truncated
        for index, tokens in zip(chunk.class_indices, chunk.prompt.token_spans):
            assert tokens, "a class without tokens is refused, never silently dropped"
            assert chunk.prompt.phrases[chunk.class_indices.index(index)].text == spec.classes[index].grounded_text
        _check_maps_back(chunk.prompt)


_span = st.tuples(st.integers(-3, 40), st.integers(-3, 40))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(st.one_of(_any_char, _tricky), max_size=30), st.lists(st.one_of(_piece, _span), max_size=3),
       st.booleans())
def test_fuzz_grounding_captions_and_phrases(caption, phrases, markup):
    """Captions with any markup and phrases given as any text or span: only GlipError, and the
    encoded phrases map back to their text."""
    try:
        text, found = grounding_phrases(caption, phrases, markup=markup)
        prompt = encode_prompt(text, found)
    except GlipError as exc:
        assert "\n" not in str(exc)
        return
    _check_maps_back(prompt)


@settings(max_examples=200, deadline=None)
@given(st.text(st.one_of(_any_char, st.sampled_from(list("-:[]{}'\"\n #&*!|>%@`"))), max_size=60))
def test_fuzz_prompt_file_text(text):
    """Any text as a prompt file: a spec or one GlipError line."""
    try:
        spec = PromptSpec.from_yaml_text(text, source="fuzz.yaml")
    except GlipError as exc:
        assert str(exc).startswith("fuzz.yaml: ") and "\n" not in str(exc)
        return
    assert spec.classes
