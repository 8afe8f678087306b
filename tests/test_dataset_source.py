"""`--data` forms (Roboflow export, official ODinW folder, ODinW name under the data root) and the
default run folders of the training commands. The official-layout folders are built from the real
raccoon data (`../shared/data/real/`) in the layout `odinw/<Name>/...` that the official download
unpacks to."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from training_utils import tiny_model_args

from glipcli.data.odinw.layout import DATA_ROOT_ENV
from glipcli.cli.main import main
from glipcli.data.dataset_source import OdinwDataMissing, resolve_dataset, resolve_splits
from glipcli.data.odinw.download import download_command
from glipcli.engine.run_folders import latest_run_folder, new_run_folder, run_name
from glipcli.errors import GlipError

pytestmark = pytest.mark.smoke

OFFICIAL_FILE = "annotations_without_background.json"


def _subset(src: Path, dst: Path, images: int, ann_name: str = OFFICIAL_FILE) -> Path:
    """The first `images` images of a real split, with their annotations, as `dst/ann_name`."""
    data = json.loads((src / "_annotations.coco.json").read_text())
    keep = data["images"][:images]
    ids = {im["id"] for im in keep}
    dst.mkdir(parents=True, exist_ok=True)
    for im in keep:
        shutil.copy(src / im["file_name"], dst / im["file_name"])
    subset = dict(data, images=keep, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    (dst / ann_name).write_text(json.dumps(subset))
    return dst / ann_name


@pytest.fixture(scope="module")
def raccoon(shared_dir) -> Path:
    return shared_dir / "data" / "real" / "raccoon"


@pytest.fixture(scope="module")
def data_root(raccoon, tmp_path_factory) -> Path:
    """DATASET/odinw/{Raccoon/Raccoon.v2-raw.coco, EgoHands/{generic,specific}} in the official layout."""
    root = tmp_path_factory.mktemp("DATASET")
    version = root / "odinw" / "Raccoon" / "Raccoon.v2-raw.coco"
    _subset(raccoon / "train", version / "train", 3)
    _subset(raccoon / "valid", version / "valid", 2)
    _subset(raccoon / "valid", version / "test", 2)
    for kind in ("generic", "specific"):
        hands = root / "odinw" / "EgoHands" / kind
        _subset(raccoon / "train", hands / "train", 2)
        _subset(raccoon / "valid", hands / "valid", 3)
        _subset(raccoon / "valid", hands / "mini_val", 1)
        _subset(raccoon / "valid", hands / "test", 2)
    return root


# -- folders --------------------------------------------------------------------------------------
def test_roboflow_export(raccoon):
    source = resolve_dataset(raccoon)
    assert (source.layout, source.name, source.odinw) == ("roboflow", "raccoon", None)
    assert source.splits["train"].ann == raccoon / "train" / "_annotations.coco.json"
    assert set(source.splits) == {"train", "valid"}


@pytest.mark.parametrize("where", ["version", "dataset"])
def test_official_odinw_folder(data_root, where):
    dataset = data_root / "odinw" / "Raccoon"
    version = dataset / "Raccoon.v2-raw.coco"
    source = resolve_dataset(version if where == "version" else dataset)
    assert (source.layout, source.name, source.odinw.name) == ("odinw", "Raccoon", "Raccoon")
    assert source.splits["train"].ann == version / "train" / OFFICIAL_FILE
    assert source.splits["train"].images == version / "train"
    assert source.splits["valid"].ann == version / "valid" / OFFICIAL_FILE  # Raccoon's evaluation split: val
    assert source.splits["test"].ann == version / "test" / OFFICIAL_FILE


def test_official_folder_is_recognised_by_its_files_whatever_its_name(data_root, tmp_path):
    copy = tmp_path / "my raccoons"
    shutil.copytree(data_root / "odinw" / "Raccoon", copy)
    source = resolve_dataset(copy)
    assert source.name == "Raccoon"
    assert source.splits["valid"].ann == copy / "Raccoon.v2-raw.coco" / "valid" / OFFICIAL_FILE


def test_minival_is_the_validation_split_where_the_registry_says(data_root):
    """EgoHands is evaluated on mini_val (registry eval_split minival); its large valid/ is not used."""
    generic = data_root / "odinw" / "EgoHands" / "generic"
    for data in (generic, data_root / "odinw" / "EgoHands"):  # the folder holds generic and specific
        source = resolve_dataset(data)
        assert source.name == "EgoHands_generic"
        assert source.splits["valid"].ann == generic / "mini_val" / OFFICIAL_FILE
        assert source.splits["test"].ann == generic / "test" / OFFICIAL_FILE
    specific = resolve_dataset(data_root / "odinw" / "EgoHands" / "specific")
    assert specific.name == "EgoHands_specific"


def test_folder_with_two_versions_and_no_telling_name_is_refused(data_root, tmp_path):
    shutil.copytree(data_root / "odinw" / "EgoHands", tmp_path / "hands")
    with pytest.raises(GlipError, match="several ODinW datasets \\(EgoHands_generic, EgoHands_specific\\)"):
        resolve_dataset(tmp_path / "hands")


def test_folder_that_is_no_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GlipError, match="not a dataset folder: no train/_annotations.coco.json"):
        resolve_dataset(tmp_path / "empty")


# -- names under the data root ----------------------------------------------------------------------
def test_odinw_name_resolves_under_the_data_root(data_root, monkeypatch):
    source = resolve_dataset("EgoHands", data_root=data_root)  # ODinW-13's EgoHands: the generic version
    assert source.name == "EgoHands_generic"
    assert source.splits["valid"].ann == data_root / "odinw/EgoHands/generic/mini_val" / OFFICIAL_FILE
    monkeypatch.setenv(DATA_ROOT_ENV, str(data_root))
    assert resolve_dataset("raccoon").splits["train"].ann == data_root / "odinw/Raccoon/Raccoon.v2-raw.coco/train" / OFFICIAL_FILE
    # resolve_splits (what training calls) takes the same forms
    assert resolve_splits("raccoon")["valid"].ann.parent.name == "valid"


def test_missing_odinw_dataset_names_the_command_that_fetches_it(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "DATASET"))
    with pytest.raises(OdinwDataMissing) as excinfo:
        resolve_dataset("pothole")
    error = excinfo.value
    message = str(error)
    assert "\n" not in message
    assert message.endswith("fetch it with: glip data download odinw --datasets pothole (or add --download)")
    assert str(tmp_path / "DATASET" / "odinw/pothole/valid" / OFFICIAL_FILE) in message
    assert error.dataset.name == "pothole" and error.data_root == tmp_path / "DATASET"
    # a data root other than the default is named in the command
    with pytest.raises(OdinwDataMissing) as excinfo:
        resolve_dataset("EgoHands", data_root=tmp_path / "my data")
    assert excinfo.value.command == f"glip data download odinw --datasets EgoHands_generic --root '{tmp_path / 'my data'}'"
    assert download_command(["Raccoon"]) == "glip data download odinw --datasets Raccoon"


def test_unknown_or_ambiguous_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GlipError, match="no such dataset folder \\(nor an ODinW dataset name\\)"):
        resolve_dataset("egohandz/")
    with pytest.raises(GlipError, match="ambiguous: OxfordPets_by-breed, OxfordPets_by-species"):
        resolve_dataset("OxfordPets")
    with pytest.raises(GlipError, match="no such dataset folder"):
        resolve_dataset("some/where/egohands")  # a path, not a name


# -- run folders ----------------------------------------------------------------------------------
def test_new_run_folders_count_up_and_never_reuse_content(tmp_path):
    root = tmp_path / "runs"
    first = new_run_folder("finetune", "egohands", root)
    assert first == root / "finetune" / "egohands"
    first.mkdir(parents=True)
    assert new_run_folder("finetune", "egohands", root) == first  # empty: still free
    (first / "run.json").write_text("{}")
    second = new_run_folder("finetune", "egohands", root)
    assert second == root / "finetune" / "egohands-2"
    second.mkdir()
    (second / "log.jsonl").write_text("")
    assert new_run_folder("finetune", "egohands", root) == root / "finetune" / "egohands-3"
    assert new_run_folder("prompt-tune", "egohands", root) == root / "prompt-tune" / "egohands"
    assert run_name("Aquarium Combined.v2-raw-1024.coco") == "Aquarium_Combined.v2-raw-1024.coco"


def test_latest_run_folder_for_resume(tmp_path):
    import os

    root = tmp_path / "runs"
    with pytest.raises(GlipError, match="no run to resume"):
        latest_run_folder("finetune", "raccoon", root)
    for i, name in enumerate(("raccoon", "raccoon-2", "pothole")):
        (root / "finetune" / name).mkdir(parents=True)
        (root / "finetune" / name / "run.json").write_text("{}")
        os.utime(root / "finetune" / name / "run.json", (1000 + i, 1000 + i))
    (root / "finetune" / "raccoon-3").mkdir()  # no run inside
    assert latest_run_folder("finetune", "raccoon", root) == root / "finetune" / "raccoon-2"
    assert latest_run_folder("finetune", None, root) == root / "finetune" / "pothole"


# -- the commands, as a new user types them -----------------------------------------------------------
def test_finetune_with_nothing_but_shots_and_data(golden_dir, data_root, tmp_path, monkeypatch, capsys):
    """`glip finetune --shots 1 --data raccoon` in a fresh folder: the ODinW dataset under the data
    root, the run in runs/finetune/Raccoon, the next one in Raccoon-2, --resume finds the latest."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv(DATA_ROOT_ENV, str(data_root))
    args = ["finetune", "--shots", "1", "--data", "raccoon", *tiny_model_args(golden_dir, tmp_path / "cfg"),
            "--epochs", "1", "--copies", "1", "--batch-size", "1", "--cpu", "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"run folder: {Path('runs/finetune/Raccoon')}"
    metrics = json.loads((work / "runs/finetune/Raccoon/metrics.json").read_text())
    assert metrics["finished"] and metrics["test"]["num_images"] == 2
    run = json.loads((work / "runs/finetune/Raccoon/run.json").read_text())
    assert run["data"]["valid"]["ann"].endswith("Raccoon.v2-raw.coco/valid/" + OFFICIAL_FILE)

    assert main(["finetune", "--resume", "--cpu"]) == 2  # the latest run has finished
    err = capsys.readouterr().err
    assert "resuming the run in runs/finetune/Raccoon" in err and "has finished" in err

    official = data_root / "odinw" / "Raccoon" / "Raccoon.v2-raw.coco"
    assert main(args[:4] + [str(official)] + args[5:]) == 0
    assert capsys.readouterr().err.splitlines()[0] == f"run folder: {Path('runs/finetune/Raccoon-2')}"
    assert (work / "runs/finetune/Raccoon-2/model_best.safetensors").is_file()


def test_finetune_on_a_missing_odinw_dataset_says_how_to_fetch_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert main(["finetune", "--shots", "5", "--data", "EgoHands"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.endswith("fetch it with: glip data download odinw --datasets EgoHands_generic (or add --download)")
    assert not (tmp_path / "runs").exists()


def test_prompt_tune_and_pretrain_default_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["prompt-tune", "--data", "nowhere/x"]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
    assert main(["prompt-tune"]) == 2
    assert "no training data" in capsys.readouterr().err
    assert main(["pretrain", "--resume"]) == 2
    assert f"no run to resume under {Path('runs/pretrain')}" in capsys.readouterr().err
