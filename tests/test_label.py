"""`glip label`: the library pieces (splits, filters, journal, writers, sharding), the command end to
end (COCO read back by the training reader, YOLO layout, resuming, refusals, unreadable images),
two processes against one, and the loop label -> `glip finetune --data` -> evaluation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from glipcli.data.coco import load_coco
from glipcli.data.splits import roboflow_splits
from glipcli.errors import GlipError
from glipcli.labeling import ImageLabels, LabelBox, LabelFilters, parse_splits
from glipcli.labeling.journal import Journal, read_journals
from glipcli.labeling.placement import unique_names
from glipcli.labeling.splits import assign_splits, split_sizes
from glipcli.labeling.yolo_writer import yolo_lines
from glipcli.sharding import Workers, merge_shards
from reliability_utils import assert_one_line_error, glip, write_small_input_golden

REPO_ROOT = Path(__file__).resolve().parents[1]
ONTOLOGY = """classes:
  - name: raccoon
    text: raccoon
    suffix: ", a furry animal with a black mask"
  - name: dog
    threshold: 0.55
suppress:
  - cat
"""


def _record(key: str, *boxes: tuple[int, tuple[float, float, float, float], float], size=(100, 80)) -> ImageLabels:
    return ImageLabels(key, key, size[0], size[1], tuple(LabelBox(c, b, s) for c, b, s in boxes))


# -- library pieces -----------------------------------------------------------------------------------------
def test_split_fractions_are_parsed_and_checked():
    assert parse_splits("train=0.8, valid=0.2") == {"train": 0.8, "valid": 0.2}
    assert list(parse_splits("test=0.1,train=0.7,valid=0.2")) == ["train", "valid", "test"]
    for bad, needle in (("train=0.8,valid=0.3", "sum to 1.1"), ("valid=1", "needs a train split"),
                        ("train=0.5,val=0.5", "unknown split 'val'"), ("train=x", "'x' is not a number"),
                        ("train", "not NAME=FRACTION"), ("train=0.5,train=0.5", "given twice")):
        with pytest.raises(GlipError, match=needle):
            parse_splits(bad)


def test_splits_are_seeded_and_proportional():
    fractions = {"train": 0.7, "valid": 0.2, "test": 0.1}
    assert split_sizes(11, fractions) == {"train": 8, "valid": 2, "test": 1}
    first = assign_splits(50, fractions, seed=3)
    assert first == assign_splits(50, fractions, seed=3) != assign_splits(50, fractions, seed=4)
    assert [first.count(n) for n in ("train", "valid", "test")] == [35, 10, 5]


def test_filters_min_size_agnostic_nms_and_cap():
    record = _record("a", (0, (10, 10, 49, 49), 0.9), (1, (12, 12, 49, 49), 0.8), (1, (60, 10, 61, 70), 0.7),
                     (0, (60, 60, 90, 75), 0.6))
    assert len(LabelFilters().apply(record).boxes) == 4
    assert [b.score for b in LabelFilters(min_box_size=3).apply(record).boxes] == [0.9, 0.8, 0.6]
    # the 'dog' box overlaps the better 'raccoon' box (IoU 0.9): dropped only across classes
    assert [b.score for b in LabelFilters(agnostic_nms=0.5).apply(record).boxes] == [0.9, 0.7, 0.6]
    assert [b.score for b in LabelFilters(max_boxes=2).apply(record).boxes] == [0.9, 0.8]
    with pytest.raises(GlipError, match="--agnostic-nms"):
        LabelFilters(agnostic_nms=1.5)


def test_yolo_lines_are_normalised_centres_and_sizes():
    record = _record("a", (1, (10, 20, 29, 59), 0.9), (0, (-5, 0, 99, 79), 0.5))
    lines = [line.split() for line in yolo_lines(record).splitlines()]
    assert lines[0] == ["1", "0.200000", "0.500000", "0.200000", "0.500000"]
    assert lines[1] == ["0", "0.500000", "0.500000", "1.000000", "1.000000"]  # clipped to the image


def test_unique_names_keep_stems_distinct():
    assert unique_names(["a/x.jpg", "b/x.jpg", "c/X.png", "d/y.jpg"]) == ["x.jpg", "x-2.jpg", "X-3.png", "y.jpg"]


def test_journal_survives_a_partial_last_line(tmp_path):
    with Journal(tmp_path, 0) as journal:
        journal.append(_record("a", (0, (1, 2, 3, 4), 0.5)))
        journal.append(_record("b"))
    path = tmp_path / "labels-0.jsonl"
    with open(path, "a") as handle:
        handle.write('{"key": "c", "ima')  # a run killed mid-line
    assert set(read_journals(tmp_path)) == {"a", "b"}
    with Journal(tmp_path, 0) as journal:
        journal.append(_record("c"))
    assert set(read_journals(tmp_path)) == {"a", "b", "c"}
    assert read_journals(tmp_path)["a"].boxes[0].box_xyxy == (1, 2, 3, 4)
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_shards_are_whole_windows_dealt_round_robin():
    items = list(range(50))
    shards = [Workers(rank, 3).shard(items, batch_size=2) for rank in range(3)]
    assert shards[0][:17] == list(range(16)) + [48]  # windows of 2 * 8 images
    assert shards[1] == list(range(16, 32)) and shards[2] == list(range(32, 48))
    assert sorted(i for shard in shards for i in shard) == items
    assert merge_shards([[(2, "c")], [(0, "a"), (3, "d")], [(1, "b")]]) == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]


# -- the command ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_weights(golden_dir, tmp_path_factory) -> Path:
    """The golden tiny model reading 96-128 px images."""
    return write_small_input_golden(golden_dir, tmp_path_factory.mktemp("weights") / "tiny-small.safetensors")


@pytest.fixture(scope="module")
def photos(shared_dir, tmp_path_factory) -> Path:
    """Ten real raccoon photos (sizes 184-960 px, one grayscale) in a folder of their own."""
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted((shared_dir / "data/real/raccoon/valid").glob("*.jpg"))[:10]:
        shutil.copy(path, folder / path.name)
    (folder / "ontology.yaml").write_text(ONTOLOGY)
    return folder


def _label(capsys, photos: Path, weights: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return glip(capsys, "label", photos, "--prompt-file", photos / "ontology.yaml", "--output", out,
                "--weights", weights, "--box-threshold", "0.5", "--quiet", *extra)


def test_label_writes_a_coco_dataset_the_training_reader_loads(photos, small_weights, tmp_path, capsys):
    out = tmp_path / "ds"
    code, _, err = _label(capsys, photos, small_weights, out, "--save-vis", "2")
    assert code == 0, err
    splits = roboflow_splits(out)
    assert set(splits) == {"train", "valid"}
    train = load_coco(splits["train"].ann, split="train")
    valid = load_coco(splits["valid"].ann, split="valid", reference=train)
    # category names are the class names, not the texts the model read
    assert train.classes == ["raccoon", "dog"] and train.category_ids == [1, 2]
    assert (len(train.images), len(valid.images)) == (8, 2)
    summary = json.loads((out / "labels.json").read_text())
    assert summary["images"] == 10 and summary["splits"]["train"]["images"] == 8
    assert summary["boxes"] == train.stats.boxes + valid.stats.boxes > 0
    assert sum(c["boxes"] for c in summary["classes"]) == summary["boxes"] == sum(summary["histogram"])
    coco = json.loads(splits["train"].ann.read_text())
    scores = {1: [], 2: []}
    for ann in coco["annotations"]:
        scores[ann["category_id"]].append(ann["score"])
    assert min(scores[1]) >= 0.5 and min(scores[2]) >= 0.55  # the global and the per-class threshold
    assert all(sum(summary["classes"][i]["histogram"][:5]) == 0 for i in range(2))
    for image in coco["images"]:  # images copied next to the annotations, sizes as displayed
        assert (out / "train" / image["file_name"]).read_bytes() == (photos / image["file_name"]).read_bytes()
    assert "| raccoon |" in (out / "labels.md").read_text()
    assert len(list((out / "preview").iterdir())) == 2
    assert yaml.safe_load((out / "prompt.yaml").read_text())["classes"][0]["text"] == "raccoon"


def test_label_yolo_layout(photos, small_weights, tmp_path, capsys):
    """The layout YOLO tools read: data.yaml names the image folders relative to itself; each
    image has a label file at its path with `images` -> `labels` and the suffix -> .txt."""
    out = tmp_path / "yolo"
    code, _, err = _label(capsys, photos, small_weights, out, "--format", "yolo", "--split", "train=0.7,valid=0.3",
                          "--link", "--keep-empty", "--max-boxes", "3")
    assert code == 0, err
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "raccoon", 1: "dog"} and data["nc"] == 2
    assert (data["train"], data["val"]) == ("images/train", "images/valid")
    images = sorted((out / data["train"]).iterdir()) + sorted((out / data["val"]).iterdir())
    assert len(images) == 10 and all(p.is_symlink() and p.resolve().parent == photos.resolve() for p in images)
    for image in images:
        label = Path(str(image).replace(f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}")).with_suffix(".txt")
        lines = [line.split() for line in label.read_text().splitlines()]
        assert len(lines) <= 3
        for cls, *coords in lines:
            assert cls in ("0", "1") and all(0.0 <= float(v) <= 1.0 for v in coords)


def test_interrupted_run_resumes_without_duplicates(photos, small_weights, tmp_path, capsys, monkeypatch):
    fresh = tmp_path / "fresh"
    assert _label(capsys, photos, small_weights, fresh)[0] == 0
    out = tmp_path / "ds"
    original = Journal.append
    calls = {"n": 0}

    def append_then_stop(self, labels):
        original(self, labels)
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(Journal, "append", append_then_stop)
    assert _label(capsys, photos, small_weights, out)[0] == 130
    monkeypatch.setattr(Journal, "append", original)
    assert not (out / "labels.json").exists() and not (out / "train").exists()
    # other settings are refused while the unfinished run is there
    code, _, err = _label(capsys, photos, small_weights, out, "--box-threshold", "0.6")
    assert_one_line_error(code, err, "unfinished labelling run with other settings (box_threshold)")
    code, _, err = glip(capsys, "label", photos, "--prompt-file", photos / "ontology.yaml", "--output", out,
                        "--weights", small_weights, "--box-threshold", "0.5")
    assert code == 0 and "4 images' labels come from an earlier run's journal" in err
    keys = [json.loads(line)["key"] for line in (out / ".glip-label/labels-0.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 10
    for name in ("train/_annotations.coco.json", "valid/_annotations.coco.json", "labels.json"):
        assert (out / name).read_text() == (fresh / name).read_text()


def test_existing_dataset_needs_overwrite_and_reuses_its_labels(photos, small_weights, tmp_path, capsys,
                                                                  monkeypatch):
    out = tmp_path / "ds"
    assert _label(capsys, photos, small_weights, out)[0] == 0
    code, _, err = _label(capsys, photos, small_weights, out, "--format", "yolo")
    assert_one_line_error(code, err, "already holds a labelled dataset (pass --overwrite to replace it)")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert_one_line_error(*_label(capsys, photos, small_weights, other)[::2], "holds other files")
    # the same model, prompt and threshold: written again in another format without running the model
    monkeypatch.setattr(Journal, "append", lambda self, labels: pytest.fail("the model ran again"))
    assert _label(capsys, photos, small_weights, out, "--format", "yolo", "--overwrite")[0] == 0
    assert (out / "data.yaml").is_file() and not (out / "train").exists()
    assert json.loads((out / "labels.json").read_text())["format"] == "yolo"
    # the dataset's own images are never inputs of a run that writes over them
    code, _, err = glip(capsys, "label", out / "images/train", "--prompt-file", photos / "ontology.yaml",
                        "--output", out, "--weights", small_weights, "--overwrite")
    assert_one_line_error(code, err, "an input image lies inside the output folder")
    assert len(list((out / "images/train").iterdir())) == 8


def test_unreadable_images_are_reported_and_skipped(photos, small_weights, tmp_path, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "ds"
    code, _, err = _label(capsys, folder, small_weights, out)
    assert code == 2 and "broken.jpg: not a readable image" in err
    assert "1 of 11 images could not be read (listed above); the dataset holds the others" in err
    summary = json.loads((out / "labels.json").read_text())
    assert summary["images"] == 10 and summary["unreadable"] == [str(folder / "broken.jpg")]


def test_bad_options_are_one_line_errors(photos, small_weights, tmp_path, capsys):
    for extra, needle in ((["--format", "voc"], "--format must be one of coco, yolo"),
                          (["--split", "train=0.5"], "sum to 0.5, not 1"),
                          (["--min-box-size", "-1"], "--min-box-size must be a finite number >= 0")):
        code, _, err = _label(capsys, photos, small_weights, tmp_path / "ds", *extra)
        assert_one_line_error(code, err, needle)
    assert not (tmp_path / "ds").exists()


# -- several processes ----------------------------------------------------------------------------------------
def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """`glip ARGS` in two CPU processes (gloo), as `accelerate launch` or `torchrun` start them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "glipcli.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture
def one_thread():
    """The single-process run with the workers' one thread each: float sums then split alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_processes_write_what_one_writes(shared_dir, small_weights, tmp_path, capsys, one_thread):
    """18 images: two processes take windows of 8 images in turn (10 and 8); the merged dataset
    and the merged `glip detect` JSON equal the single-process ones byte for byte."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted((shared_dir / "data/real/raccoon/valid").glob("*.jpg"))[:18]:
        shutil.copy(path, folder / path.name)
    (folder / "ontology.yaml").write_text(ONTOLOGY)
    args = ["--prompt-file", folder / "ontology.yaml", "--weights", small_weights, "--quiet"]
    assert glip(capsys, "label", folder, "--output", tmp_path / "one", "--box-threshold", "0.5", *args)[0] == 0
    run = _torchrun("label", folder, "--output", tmp_path / "two", "--box-threshold", "0.5", *args)
    assert run.returncode == 0, run.stderr[-3000:]
    journals = sorted((tmp_path / "two/.glip-label").glob("labels-*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in journals] == [10, 8]
    for name in ("train/_annotations.coco.json", "valid/_annotations.coco.json", "labels.json", "labels.md"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    assert glip(capsys, "detect", folder, "--json", tmp_path / "one.json", *args)[0] == 0
    run = _torchrun("detect", folder, "--json", tmp_path / "two.json", *args)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "two.json").read_text() == (tmp_path / "one.json").read_text()


# -- the loop: label, fine-tune on the labels, evaluate ---------------------------------------------------------
def test_label_then_finetune_then_evaluate(shared_dir, golden_dir, tmp_path, capsys):
    """The reduced reference model labels 12 raccoon photos; `glip finetune --data` trains on the
    labels for two steps, validates on the labelled split and is tested against the real human
    boxes of the raccoon validation set."""
    small = tmp_path / "cfg"
    small.mkdir()
    tree = yaml.safe_load((golden_dir / "tiny/config.yaml").read_text())
    tree["INPUT"].update(MIN_SIZE_TEST=96, MAX_SIZE_TEST=128)
    (small / "config.yaml").write_text(yaml.safe_dump(tree))
    shutil.copy(golden_dir / "tiny/bert_config.json", small / "bert_config.json")
    model = ["--config", small / "config.yaml", "--weights", golden_dir / "tiny/weights.safetensors"]
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((shared_dir / "data/real/raccoon/train").glob("*.jpg"))[:12]:
        shutil.copy(path, photos / path.name)
    (photos / "ontology.yaml").write_text("classes:\n  - name: raccoon\n    suffix: ', a wild animal'\n")
    data = tmp_path / "ds"
    code, _, err = glip(capsys, "label", photos, "--prompt-file", photos / "ontology.yaml", "--output", data,
                        "--box-threshold", "0.55", "--max-boxes", "3", "--split", "train=0.75,valid=0.25", *model)
    assert code == 0, err
    real = shared_dir / "data/real/raccoon/valid/_annotations.coco.json"
    run = tmp_path / "run"
    code, _, err = glip(capsys, "finetune", "--data", data, "--prompt-file", data / "prompt.yaml", *model,
                        "--output", run, "--epochs", "1",
                        "--copies", "1", "--batch-size", "5", "--test-ann", real, "--eval-batch-size", "8",
                        "--cpu", "--no-progress")
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["caption"] == "raccoon, a wild animal"  # the labelling prompt
    assert metrics["test"]["num_images"] == 79 and 0.0 <= metrics["test"]["metrics"]["AP50"] <= 1.0
    assert set(metrics["best"]["val"]) >= {"AP", "AP50"}
    assert (run / "model_best.safetensors").is_file()
