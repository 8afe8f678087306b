"""Prompt specs: loaders (-p, classes files, YAML prompt files), validation, captions, ODinW files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glipcli.errors import GlipError
from glipcli.predictor import parse_class_prompt
from glipcli.prompts.caption import detection_caption, prompted_caption
from glipcli.prompts.chunking import plan_chunks
from glipcli.prompts.encoding import encode_prompt
from glipcli.prompts.prompt_file import (ClassPrompt, PromptSpec, load_prompt_spec,
                                         official_clean_name)
from glipcli.prompts.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
ODINW = REPO / "prompts" / "odinw"


def _load(tmp_path: Path, text: str) -> PromptSpec:
    path = tmp_path / "prompt.yaml"
    path.write_text(text, encoding="utf-8")
    return PromptSpec.from_yaml(path)


# ---------------------------------------------------------------- round trip

AWKWARD = PromptSpec(
    classes=[
        ClassPrompt("person"),
        ClassPrompt("pothole", suffix=", a dark hole in asphalt"),
        ClassPrompt("CoW", text="flat mushroom", threshold=0.25),
        ClassPrompt("package", prefix="there is a ", suffix=" on the porch", threshold=1),
        ClassPrompt("o "), ClassPrompt("0"), ClassPrompt("null"), ClassPrompt("yes"), ClassPrompt("t\\"),
        ClassPrompt("  padded, with comma"), ClassPrompt("café: \"quoted\" # not a comment"),
        ClassPrompt("a, b", text="a, b"),
    ],
    suppress=["toy car", "- dash", "0.5"],
)


def test_yaml_round_trip(tmp_path):
    text = AWKWARD.to_yaml(header="a header\nover two lines")
    assert text.startswith("# a header\n# over two lines\n")
    assert _load(tmp_path, text) == AWKWARD


def test_round_trip_writes_the_short_forms():
    entries = AWKWARD.to_dict()["classes"]
    assert entries[0] == "person"
    assert entries[1] == "pothole, a dark hole in asphalt"
    assert entries[2] == {"name": "CoW", "text": "flat mushroom", "threshold": 0.25}
    assert entries[9] == {"name": "  padded, with comma"}  # a string would be stripped and split


_chars = st.characters(blacklist_categories=("Cs",))
_strings = st.text(_chars, max_size=12)
_names = st.text(_chars, min_size=1, max_size=12).filter(lambda s: s.strip() != "")


@st.composite
def _specs(draw) -> PromptSpec:
    names = draw(st.lists(_names, min_size=1, max_size=5, unique=True))
    classes = [ClassPrompt(name=n, text=draw(st.none() | _names), prefix=draw(_strings), suffix=draw(_strings),
                           threshold=draw(st.none() | st.floats(0, 1)))
               for n in names]
    taken = set(names) | {c.grounded_text for c in classes}
    suppress = draw(st.lists(_names.filter(lambda s: s not in taken), max_size=3, unique=True))
    return PromptSpec(classes=classes, suppress=suppress)


@settings(max_examples=60, deadline=None)
@given(_specs())
def test_yaml_round_trip_property(spec):
    assert PromptSpec.from_yaml_text(spec.to_yaml()) == spec


# ---------------------------------------------------------------- bad files

BAD_FILES = [
    ("classes: [person]\nthreshold: 0.3\n", "unknown key 'threshold' (allowed: classes, suppress)"),
    ("classes:\n  - name: person\n    treshold: 0.3\n", "classes[0]: unknown key 'treshold'"),
    ("suppress: [dog]\n", "missing 'classes'"),
    ("classes: []\n", "'classes' is empty"),
    ("classes: person\n", "'classes' must be a list, got str"),
    ("- person\n", "expected a mapping with a 'classes' list"),
    ("", "expected a mapping with a 'classes' list at the top level, got nothing"),
    ("classes: ['']\n", "classes[0]: a class name is empty"),
    ("classes: [person, '   ']\n", "classes[1]: a class name is empty"),
    ("classes: [{name: ''}]\n", "classes[0]: a class name is empty"),
    ("classes: [', a description']\n", "classes[0]: class ', a description': no name before the comma"),
    ("classes: [{text: person}]\n", "classes[0]: missing 'name'"),
    ("classes: [person, bicycle, person]\n", "duplicate class name 'person'"),
    ("classes: [7]\n", "classes[0]: must be a class name or a mapping with 'name', got int 7 (quote it)"),
    ("classes: [{name: 7}]\n", "classes[0]: name must be a string, got int 7 (quote it)"),
    ("classes: [{name: a, text: [x]}]\n", "classes[0]: text must be a string, got list"),
    ("classes: [{name: a, text: ' '}]\n", "class 'a': text is empty"),
    ("classes: [{name: a, suffix: 3}]\n", "classes[0]: suffix must be a string, got int"),
    ("classes: [{name: a, threshold: high}]\n", "classes[0]: threshold must be a number in [0, 1], got str"),
    ("classes: [{name: a, threshold: true}]\n", "threshold must be a number in [0, 1], got bool"),
    ("classes: [{name: a, threshold: 1.5}]\n", "class 'a': threshold 1.5 is outside [0, 1]"),
    ("classes: [{name: a, threshold: -0.1}]\n", "class 'a': threshold -0.1 is outside [0, 1]"),
    ("classes: [{name: a, threshold: .nan}]\n", "class 'a': threshold must be a number in [0, 1], got nan"),
    ("classes: [a]\nsuppress: b\n", "'suppress' must be a list of phrases, got str"),
    ("classes: [a]\nsuppress: [1]\n", "suppress[0]: must be a string, got int"),
    ("classes: [a]\nsuppress: [' ']\n", "suppression phrase #1 is empty"),
    ("classes: [a]\nsuppress: [b, b]\n", "duplicate suppression phrase 'b'"),
    ("classes: [a]\nsuppress: [a]\n", "suppression phrase 'a' is also a class"),
    ("classes: [{name: CoW, text: mushroom}]\nsuppress: [mushroom]\n", "'mushroom' is also a class"),
    ("classes: [a\n", "not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_prompt_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(GlipError) as info:
        _load(tmp_path, text)
    assert str(info.value).startswith(str(tmp_path / "prompt.yaml") + ": ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_gives_the_line(tmp_path):
    with pytest.raises(GlipError, match=r"not valid YAML: mapping values are not allowed here \(line 3\)"):
        _load(tmp_path, "classes:\n  - a\n  - b: c: d\n")


def test_missing_or_binary_files(tmp_path):
    with pytest.raises(GlipError, match="no such prompt file"):
        PromptSpec.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(GlipError, match="no such classes file"):
        PromptSpec.from_classes_file(tmp_path / "nope.txt")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00classes")
    with pytest.raises(GlipError, match="not UTF-8"):
        PromptSpec.from_yaml(binary)


def test_programmatic_specs_are_validated_too():
    with pytest.raises(GlipError, match="at least one class"):
        PromptSpec(classes=[])
    with pytest.raises(GlipError, match="not a ClassPrompt"):
        PromptSpec(classes=["person"])
    with pytest.raises(GlipError, match="outside"):
        ClassPrompt("a", threshold=2)
    assert ClassPrompt("a", threshold=1).threshold == 1.0


# ---------------------------------------------------------------- the shortest form


def test_shortest_form_grounds_only_the_name():
    cls = ClassPrompt.parse("  pothole, a dark hole in asphalt ")
    assert cls == ClassPrompt(name="pothole", suffix=", a dark hole in asphalt")
    caption = PromptSpec([cls, ClassPrompt("car")]).caption()
    # The class contributes exactly the written string; only the name is a phrase.
    assert caption.caption == "pothole, a dark hole in asphalt. car"
    assert [(p.text, p.start, p.end) for p in caption.classes] == [("pothole", 0, 7), ("car", 33, 36)]
    prompt = encode_prompt(caption.caption, caption.classes)
    pieces = load_tokenizer().convert_ids_to_tokens(prompt.input_ids[0].tolist())
    assert [pieces[t] for t in prompt.token_spans[0]] == ["pot", "##hole"]
    assert [pieces[t] for t in prompt.token_spans[1]] == ["car"]


def test_shortest_form_keeps_space_before_the_comma():
    cls = ClassPrompt.parse("penguin , which is black and white")
    assert (cls.name, cls.suffix) == ("penguin", " , which is black and white")


def test_shortest_form_in_every_source(tmp_path):
    expected = [ClassPrompt("pothole", suffix=", a dark hole"), ClassPrompt("car")]
    assert PromptSpec.from_prompts("pothole, a dark hole. car.").classes == expected
    assert _load(tmp_path, "classes: ['pothole, a dark hole', car]\n").classes == expected
    names = tmp_path / "names.txt"
    names.write_text("pothole, a dark hole\ncar\n")
    assert PromptSpec.from_classes_file(names).classes == expected


# ---------------------------------------------------------------- class lists


def test_prompt_strings_match_the_predictor_parser():
    prompts = ["person. bicycle.", " traffic light ", "car.dog"]
    spec = PromptSpec.from_prompts(prompts)
    assert spec.names == parse_class_prompt(prompts) == ["person", "bicycle", "traffic light", "car", "dog"]
    assert spec.caption().caption == detection_caption(spec.names)[0]
    with pytest.raises(GlipError, match="empty prompt"):
        PromptSpec.from_prompts([" . ", ""])
    with pytest.raises(GlipError, match="duplicate class name 'car'"):
        PromptSpec.from_prompts("car. bus. car")


def test_classes_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# my classes\nperson\n\n   \n  traffic light  \n  # indented comment\nbow_(weapon)\n")
    assert PromptSpec.from_classes_file(path).names == ["person", "traffic light", "bow_(weapon)"]
    cleaned = PromptSpec.from_classes_file(path, clean_names=True)
    assert cleaned.names == ["person", "traffic light", "bow_(weapon)"]
    assert [c.grounded_text for c in cleaned.classes] == ["person", "traffic light", "bow "]
    path.write_text("# nothing\n\n")
    with pytest.raises(GlipError, match="no class names in the file"):
        PromptSpec.from_classes_file(path)
    path.write_text("a\nb\na\n")
    with pytest.raises(GlipError, match=r"names.txt: duplicate class name 'a'"):
        PromptSpec.from_classes_file(path)
    path.write_text("a\n, b\n")
    with pytest.raises(GlipError, match=r"names.txt: line 2: .*no name before the comma"):
        PromptSpec.from_classes_file(path)


def test_official_clean_name():
    assert official_clean_name("bow_(weapon)") == "bow "
    assert official_clean_name("small_fish") == "small fish"
    assert official_clean_name("a (b) c (d)") == "a "  # greedy: first '(' to last ')'
    assert official_clean_name("a   b") == "a  b"  # one left-to-right pass over pairs
    assert official_clean_name("  ") == " "
    spec = PromptSpec.from_names(["small_fish", "crab"], clean_names=True)
    assert spec.classes == [ClassPrompt("small_fish", text="small fish"), ClassPrompt("crab")]
    assert PromptSpec.from_names(["small_fish"]).classes == [ClassPrompt("small_fish")]


def test_load_prompt_spec_takes_exactly_one_source(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("classes: [a]\n")
    assert load_prompt_spec(prompt_file=path).names == ["a"]
    assert load_prompt_spec(prompts=["a. b"]).names == ["a", "b"]
    with pytest.raises(GlipError, match="no classes given"):
        load_prompt_spec()
    with pytest.raises(GlipError, match="one way only, not -p/--prompt and --prompt-file"):
        load_prompt_spec(prompts=["a"], prompt_file=path)


# ---------------------------------------------------------------- captions


def _official_query(names, caption_prompt=None):
    """The official evaluation query (create_queries_and_maps) written out from its definition:
    per class prefix + name + suffix (caption prompt) or the cleaned name, '. ' between classes,
    then each extra (suppression) phrase after '. '."""
    query, spans = "", []
    for i, name in enumerate(names):
        if caption_prompt:
            query += caption_prompt[i]["prefix"]
        start = len(query)
        query += caption_prompt[i]["name"] if caption_prompt else official_clean_name(name)
        spans.append((start, len(query)))
        if caption_prompt:
            query += caption_prompt[i]["suffix"]
        if i != len(names) - 1:
            query += ". "
    return query, spans


def test_caption_prompt_form_and_suppression():
    spec = PromptSpec([ClassPrompt("fish", prefix=" "), ClassPrompt("penguin", suffix=" , which is black and white"),
                       ClassPrompt("pothole", text="holes", prefix="there are some ", suffix=" on the road")],
                      suppress=["toy fish", "statue"])
    caption = spec.caption()
    assert caption.caption == (" fish. penguin , which is black and white. there are some holes on the road"
                               ". toy fish. statue")
    assert [caption.caption[p.start:p.end] for p in caption.classes] == ["fish", "penguin", "holes"]
    assert [caption.caption[p.start:p.end] for p in caption.suppress] == ["toy fish", "statue"]
    assert caption.phrases == caption.classes + caption.suppress


@settings(max_examples=60, deadline=None)
@given(st.lists(_names, min_size=1, max_size=8))
def test_prompted_caption_without_context_is_the_detection_caption(names):
    caption, phrases, extras = prompted_caption([("", n, "") for n in names])
    assert (caption, phrases) == detection_caption(names) and extras == []


# ---------------------------------------------------------------- ODinW files


@pytest.fixture(scope="module")
def registry(shared_dir):
    return json.loads((shared_dir / "odinw" / "registry.json").read_text())


def _expected(entry35, odinw13, variant):
    """(labels, caption, grounded spans) the file must give, from the registry alone."""
    plain = odinw13.get(entry35["config"], entry35)
    if variant == "manual":
        caption, spans = _official_query(entry35["classes"], entry35["caption_prompt"])
    else:
        caption, spans = _official_query(plain["classes"])
    keep = [i for i, (s, e) in enumerate(spans) if caption[s:e].strip()]
    return [plain["classes"][i] for i in keep], caption, [spans[i] for i in keep]


@pytest.mark.parametrize("variant", ["manual", "plain"])
def test_odinw_files_match_the_registry(registry, variant):
    odinw13 = {e["config"]: e for e in registry["odinw13"]}
    files = sorted(p.name for p in (ODINW / variant).glob("*.yaml"))
    assert files == sorted(e["config"] for e in registry["odinw35"])
    for entry in registry["odinw35"]:
        spec = PromptSpec.from_yaml(ODINW / variant / entry["config"])
        labels, caption, spans = _expected(entry, odinw13, variant)
        built = spec.caption()
        assert spec.names == labels, entry["config"]
        assert built.caption == caption, entry["config"]
        assert [(p.start, p.end) for p in built.classes] == spans, entry["config"]
        plan_chunks(spec)  # every class fits one caption and has tokens


def test_odinw_manual_prompts_are_the_official_ones():
    def load(name):
        return {c.name: c for c in PromptSpec.from_yaml(ODINW / "manual" / name).classes}

    aquarium = load("Aquarium_Aquarium_Combined.v2-raw-1024.coco.yaml")
    assert aquarium["penguin"].suffix == " , which is black and white"
    assert aquarium["puffin"].suffix == " with orange beaks "
    assert aquarium["stingray"].suffix == " which is flat and round"
    hand = load("EgoHands_generic.yaml")["hand"]
    assert hand.prefix + hand.grounded_text + hand.suffix == " hand of a person"
    package = load("Packages_Raw.yaml")["package"]
    assert package.prefix + package.grounded_text + package.suffix == "there is a package on the porch"
    pothole = load("pothole.yaml")["pothole"]
    assert pothole.prefix + pothole.grounded_text + pothole.suffix == "there are some holes on the road"
    assert load("CottontailRabbits.yaml")["Cottontail-Rabbit"].grounded_text == "rabbit"
    mushrooms = load("NorthAmericaMushrooms_North_American_Mushrooms.v1-416x416.coco.yaml")
    assert [c.grounded_text for c in mushrooms.values()] == ["flat mushroom", "yellow mushroom"]
    plain = {c.name: c for c in PromptSpec.from_yaml(ODINW / "plain" / "CottontailRabbits.yaml").classes}
    assert plain["Cottontail-Rabbit"].grounded_text == "Cottontail-Rabbit"


def test_odinw_files_are_what_the_generator_writes(shared_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("make_prompts", ODINW / "make_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.write_all(shared_dir / "odinw" / "registry.json", tmp_path):
        relative = path.relative_to(tmp_path)
        assert path.read_text() == (ODINW / relative).read_text(), relative
