"""ODinW registries (package copy vs the official-config facts), data layouts, suites and suite files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from glipcli.data.odinw import registry as reg
from glipcli.data.odinw.layout import BenchDataset, locate_odinw
from glipcli.bench.suite import default_prompts_dir, load_suite
from glipcli.errors import GlipError

ODINW13_NAMES = ["AerialMaritimeDrone_large", "Aquarium", "CottontailRabbits", "EgoHands_generic",
                 "NorthAmericaMushrooms", "Packages", "PascalVOC", "Raccoon", "ShellfishOpenImages",
                 "VehiclesOpenImages", "pistols", "pothole", "thermalDogsAndPeople"]


# -- the packaged registry -------------------------------------------------------------------------------
def test_registry_is_package_data():
    assert reg.REGISTRY_PATH.is_file()
    assert reg.REGISTRY_PATH.parent == Path(reg.__file__).resolve().parents[2] / "assets"


@pytest.mark.parametrize("suite", ["odinw13", "odinw35"])
def test_registry_matches_official_configs(shared_dir, suite):
    official = json.loads((shared_dir / "odinw" / "registry.json").read_text())[suite]
    ours = reg.odinw_suite(suite)
    assert [d.config for d in ours] == [e["config"] for e in official]
    for d, e in zip(ours, official):
        assert list(d.classes) == e["classes"], d.name
        assert list(d.category_ids) == e["category_ids"], d.name
        assert d.eval_split == e["eval_split"], d.name
        assert d.general_copy == e["general_copy"]
        assert {k: (v.ann_file, v.img_dir) for k, v in d.splits.items()} == \
            {k: (v["ann_file"], v["img_dir"]) for k, v in e["splits"].items()}
        assert {f"{f.split}_{f.shots}_{f.seed}": f.path for f in d.fewshot} == e["fewshot_splits"]
        if e["caption_prompt"] is None:
            assert d.caption_prompt is None
        else:
            assert [(p.prefix, p.name, p.suffix) for p in d.caption_prompt] == \
                [(p["prefix"], p["name"], p["suffix"]) for p in e["caption_prompt"]]


def test_paper_numbers_are_a_copy(shared_dir):
    from glipcli.bench.paper import NUMBERS_PATH
    assert NUMBERS_PATH.read_bytes() == (shared_dir / "paper" / "glip_numbers.yaml").read_bytes()


def test_odinw13_names_classes_and_splits():
    suite = reg.odinw_suite("odinw13")
    assert [d.name for d in suite] == ODINW13_NAMES
    by = {d.name: d for d in suite}
    assert {n for n, d in by.items() if d.eval_split == "minival"} == {"EgoHands_generic", "VehiclesOpenImages"}
    assert all(d.eval_split == "val" for n, d in by.items() if n not in ("EgoHands_generic", "VehiclesOpenImages"))
    assert by["NorthAmericaMushrooms"].classes == ("CoW", "chanterelle")
    assert by["CottontailRabbits"].classes == ("Cottontail-Rabbit",)
    assert by["EgoHands_generic"].eval.ann_file == "odinw/EgoHands/generic/mini_val/annotations_without_background.json"
    assert by["PascalVOC"].general_copy == 4 and len(by["PascalVOC"].classes) == 20
    # ODinW-35 carries the manual class names and caption prompts
    by35 = {d.name: d for d in reg.odinw_suite("odinw35")}
    assert len(by35) == 35
    assert by35["NorthAmericaMushrooms"].classes == ("flat mushroom", "yellow mushroom")
    assert [p.name for p in by35["pothole"].caption_prompt] == ["holes"]
    assert by35["Packages"].caption_prompt[0].prefix == "there is a "
    assert sorted(d.paper_name for d in suite) == sorted(
        ["PascalVOC", "AerialMaritimeDrone", "Aquarium", "CottontailRabbits", "EgoHands", "NorthAmericaMushrooms",
         "Packages", "Raccoon", "ShellfishOpenImages", "VehiclesOpenImages", "Pistols", "Pothole",
         "ThermalDogsAndPeople"])


def test_fewshot_files_and_prompt_file_names():
    d = reg.odinw_dataset("Raccoon", "odinw13")
    f = d.fewshot_file(5, 30)
    assert f is not None and f.path.endswith("train/fewshot_train_shot5_seed30.json")
    assert d.fewshot_file(2, 30) is None
    assert d.prompt_file("P", "manual") == Path("P/manual/Raccoon_Raccoon.v2-raw.coco.yaml")
    with pytest.raises(GlipError, match="unknown prompt variant"):
        d.prompt_file("P", "fancy")


def test_prompt_files_follow_the_naming_convention():
    pdir = default_prompts_dir()
    assert pdir.is_dir(), f"the repository's ODinW prompt files are missing at {pdir}"
    for d in reg.odinw_suite("odinw35"):
        for variant in reg.PROMPT_VARIANTS:
            assert d.prompt_file(pdir, variant).is_file(), (d.name, variant)


def test_name_lookup():
    assert reg.odinw_dataset("Pistols", "odinw13").name == "pistols"
    assert reg.odinw_dataset("pistols_export.yaml", "odinw13").name == "pistols"
    assert reg.odinw_dataset("north-america mushrooms").name == "NorthAmericaMushrooms"
    assert reg.odinw_dataset("AerialMaritimeDrone", "odinw13").name == "AerialMaritimeDrone_large"
    assert reg.odinw_dataset("chess_pieces").name == "ChessPieces"
    with pytest.raises(GlipError, match="ambiguous: AerialMaritimeDrone_large, AerialMaritimeDrone_tiled"):
        reg.odinw_dataset("AerialMaritimeDrone", "odinw35")
    with pytest.raises(GlipError, match="unknown dataset 'Zebras'.*Raccoon"):
        reg.odinw_dataset("Zebras", "odinw13")
    with pytest.raises(GlipError, match="unknown ODinW suite"):
        reg.odinw_suite("odinw99")


# -- layouts ---------------------------------------------------------------------------------------------
def _coco(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))


def test_official_layout(tmp_path):
    d = reg.odinw_dataset("Raccoon", "odinw13")
    data = tmp_path / "DATA"
    for split in ("train", "val"):
        _coco(data / d.splits[split].ann_file)
    (data / d.fewshot_file(1, 3).path).write_text("{}")
    for root in (data, data / "odinw"):  # the data root, or its odinw/ folder
        found = locate_odinw(d, root, need_train=True)
        assert isinstance(found, BenchDataset) and found.layout == "official"
        assert found.eval.ann_file == data / d.splits["val"].ann_file
        assert found.train.ann_file.name == "annotations_without_background.json"
        assert found.fewshot_file(1, 3) == data / d.fewshot_file(1, 3).path
        assert found.fewshot_file(1, 30) is None
        assert found.notes == ()


def test_official_layout_with_only_the_roboflow_file(tmp_path):
    d = reg.odinw_dataset("pothole", "odinw13")
    _coco(tmp_path / Path(d.splits["val"].ann_file).parent / "_annotations.coco.json")
    found = locate_odinw(d, tmp_path)
    assert isinstance(found, BenchDataset) and found.eval.ann_file.name == "_annotations.coco.json"


def test_roboflow_export_layout(tmp_path):
    for split in ("train", "valid"):
        _coco(tmp_path / "raccoon" / split / "_annotations.coco.json")
    found = locate_odinw(reg.odinw_dataset("Raccoon", "odinw13"), tmp_path, need_train=True)
    assert isinstance(found, BenchDataset) and found.layout == "roboflow"
    assert found.root == tmp_path / "raccoon" and found.eval_split == "val"
    assert found.eval.ann_file == tmp_path / "raccoon" / "valid" / "_annotations.coco.json"
    assert found.fewshot_files == {}


def test_roboflow_export_of_a_minival_dataset(tmp_path):
    ego = reg.odinw_dataset("EgoHands", "odinw13")
    _coco(tmp_path / "EgoHands" / "valid" / "_annotations.coco.json")
    found = locate_odinw(ego, tmp_path)
    assert isinstance(found, BenchDataset) and found.eval_split == "val"
    assert "minival is not in this export" in found.notes[0]
    _coco(tmp_path / "EgoHands" / "mini_val" / "_annotations.coco.json")
    found = locate_odinw(ego, tmp_path)
    assert found.eval_split == "minival" and found.notes == ()


def test_missing_datasets_are_named_with_where_expected(tmp_path):
    _coco(tmp_path / "raccoon" / "valid" / "_annotations.coco.json")  # no train split
    suite = load_suite("odinw13").select(["Raccoon", "pothole"])
    avail = suite.locate(tmp_path, prompts="manual")
    assert [d.name for d in avail.found] == ["Raccoon"] and [m.name for m in avail.missing] == ["pothole"]
    line = avail.report()[0]
    assert line.startswith("pothole: not found (expected ") and str(tmp_path / "odinw/pothole/valid") in line
    with pytest.raises(GlipError, match="1 dataset missing: pothole.*--skip-missing") as err:
        avail.require()
    assert "\n" not in str(err.value)
    assert [d.name for d in avail.require(skip_missing=True)] == ["Raccoon"]
    # training needs the train split too
    avail = suite.locate(tmp_path, prompts="manual", need_train=True)
    assert [m.name for m in avail.missing] == ["Raccoon", "pothole"]
    with pytest.raises(GlipError, match="no dataset of the suite was found"):
        avail.require(skip_missing=True)


def test_odinw_suite_prompts(tmp_path):
    suite = load_suite("odinw13").select(["raccoon"])
    with pytest.raises(GlipError, match="--prompts must be plain or manual"):
        suite.locate(tmp_path, prompts="names")
    with pytest.raises(GlipError, match="no manual prompt file for ODinW dataset Raccoon"):
        suite.locate(tmp_path, prompts="manual", prompts_dir=tmp_path / "nowhere")
    with pytest.raises(GlipError, match="needs --data-root"):
        suite.locate(None)
    pdir = tmp_path / "prompts"
    (pdir / "plain").mkdir(parents=True)
    (pdir / "plain" / "Raccoon_Raccoon.v2-raw.coco.yaml").write_text("classes: [raccoon]\n")
    _coco(tmp_path / "Raccoon" / "valid" / "_annotations.coco.json")
    found = suite.locate(tmp_path, prompts="plain", prompts_dir=pdir).require()[0]
    assert found.prompt_file == pdir / "plain" / "Raccoon_Raccoon.v2-raw.coco.yaml" and found.prompts == "plain"
    assert found.odinw is not None and found.odinw.name == "Raccoon"


def test_real_roboflow_exports_are_found(shared_dir):
    avail = load_suite("odinw35").locate(shared_dir / "data" / "real", prompts="manual", need_train=True)
    assert sorted(d.name for d in avail.found) == ["BCCD", "ChessPieces", "Raccoon", "pothole"]
    assert len(avail.missing) == 31


# -- suite files -----------------------------------------------------------------------------------------
def _suite_file(tmp_path: Path, data) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_suite_file(tmp_path):
    for split in ("train", "valid", "test"):
        _coco(tmp_path / "data" / "a" / split / "_annotations.coco.json")
    _coco(tmp_path / "b" / "train.json")
    _coco(tmp_path / "b" / "val.json")
    (tmp_path / "b" / "imgs").mkdir()
    (tmp_path / "a.yaml").write_text("classes: [thing]\n")
    path = _suite_file(tmp_path, {"name": "mine", "datasets": [
        {"name": "a", "root": "data/a", "prompt_file": "a.yaml", "eval_split": "test"},
        {"name": "b", "train": {"ann_file": "b/train.json", "img_dir": "b/imgs"}, "valid": "b/val.json"},
        {"name": "c", "root": "data/nothing"},
        {"name": "d", "root": "data/a", "eval_split": "minival"},
    ]})
    suite = load_suite(path)
    assert suite.name == "mine" and suite.names == ["a", "b", "c", "d"] and not suite.is_odinw
    avail = suite.locate(need_train=True)
    a, b = avail.found
    assert (a.layout, a.eval_split, a.prompts, a.prompt_file) == ("roboflow", "test", "file", tmp_path / "a.yaml")
    assert a.eval.ann_file == tmp_path / "data" / "a" / "test" / "_annotations.coco.json"
    assert (b.layout, b.eval_split, b.prompts, b.prompt_file) == ("files", "val", "names", None)
    assert b.train.img_dir == tmp_path / "b" / "imgs" and b.eval.img_dir == tmp_path / "b"
    assert [m.name for m in avail.missing] == ["c", "d"]
    assert avail.report()[0] == (f"c: no Roboflow export found (expected "
                                 f"{tmp_path / 'data/nothing/valid/_annotations.coco.json'} or "
                                 f"{tmp_path / 'data/nothing/train/_annotations.coco.json'})")
    assert avail.report()[1] == (f"d: split minival not found (expected "
                                 f"{tmp_path / 'data/a/mini_val/_annotations.coco.json'})")
    assert load_suite(path).select(["B"]).names == ["b"]
    with pytest.raises(GlipError, match="unknown dataset 'e' in suite mine"):
        suite.select(["e"])
    # a bare list, named after the file
    bare = _suite_file(tmp_path, [{"name": "a", "root": "data/a"}])
    assert load_suite(bare).name == "suite"


def test_suite_from_real_data(shared_dir, tmp_path):
    real = shared_dir / "data" / "real"
    path = _suite_file(tmp_path, {"datasets": [{"name": "raccoon", "root": str(real / "raccoon")},
                                               {"name": "pothole", "root": str(real / "pothole")}]})
    found = load_suite(path).locate(need_train=True).require()
    assert [(d.name, d.layout, d.eval_split) for d in found] == [("raccoon", "roboflow", "val"),
                                                                 ("pothole", "roboflow", "val")]


@pytest.mark.parametrize("data, message", [
    ({"datasets": [{"name": "a", "root": "x", "promt_file": "p.yaml"}]},
     r"datasets\[0\] \(a\): unknown key 'promt_file' \(allowed: name, root, prompt_file"),
    ({"datasets": [{"root": "x"}]}, r"datasets\[0\]: needs a name"),
    ({"datasets": [{"name": "a", "root": "x"}, {"name": "A", "root": "y"}]}, "dataset name 'A' is used twice"),
    ({"datasets": [{"name": "a"}]}, r"needs root \(a Roboflow export folder\) or split files"),
    ({"datasets": [{"name": "a", "root": "x", "eval_split": "train"}]}, "eval_split: must be val, minival or test"),
    ({"datasets": [{"name": "a", "train": "t.json"}]}, "eval_split is val but no val split files are given"),
    ({"datasets": [{"name": "a", "val": {"img_dir": "i"}}]}, r"\.val: missing ann_file"),
    ({"datasets": [{"name": "a", "val": {"ann_file": 3}}]}, r"\.val\.ann_file: must be a path"),
    ({"datasets": [{"name": "a", "val": "v.json", "valid": "w.json"}]}, "split val given twice"),
    ({"datasets": []}, "needs a non-empty list of datasets"),
    ({"sets": []}, "unknown key 'sets'"),
    ({"datasets": ["a"]}, r"datasets\[0\]: must be a mapping"),
    ("datasets: [\n", r"not valid YAML: .*\(line 2\)"),
])
def test_suite_file_errors(tmp_path, data, message):
    path = _suite_file(tmp_path, data)
    with pytest.raises(GlipError, match=message) as err:
        load_suite(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_suite_spec_errors(tmp_path):
    with pytest.raises(GlipError, match="no such suite file"):
        load_suite(tmp_path / "absent.yaml")
    with pytest.raises(GlipError, match="--suite must be odinw13, odinw35 or a suite file"):
        load_suite("coco")
    assert load_suite("ODinW-13").names == ODINW13_NAMES
    path = _suite_file(tmp_path, {"datasets": [{"name": "a", "root": "x", "prompt_file": "missing.yaml"}]})
    with pytest.raises(GlipError, match="missing.yaml: no such prompt file"):
        load_suite(path).locate()
