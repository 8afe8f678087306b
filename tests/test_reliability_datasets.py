"""Bad-input matrix, datasets: the COCO readers behind `glip finetune` (training data) and
`glip bench` (evaluation ground truth), through the commands, plus fuzzing of both readers.

Rows already covered elsewhere at the reader level (here they go through the commands): malformed
JSON, missing keys, unknown ids and empty categories (tests/test_training_data.py), clipping
arithmetic, placeholder categories of real Roboflow exports, zero-area boxes of real datasets
(tests/test_training_data.py), a validation split whose categories disagree with training's
(tests/test_training_data.py), pycocotools ground-truth checks (tests/test_bench_eval.py).

Every refusal happens while the data is read, before any model is loaded or output written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glipcli.evaluation.coco import load_ground_truth
from glipcli.evaluation.detection import dataset_prompt_spec, map_classes, require_evaluable
from glipcli.data.coco import load_coco
from glipcli.errors import GlipError
from reliability_utils import assert_one_line_error, glip, write_tiny_weights
from training_utils import shapes_dataset

ANN = "_annotations.coco.json"


@pytest.fixture(scope="module")
def tiny_weights(golden_dir, tmp_path_factory) -> Path:
    return write_tiny_weights(golden_dir, tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory) -> Path:
    """Train + valid, two images each, classes red and blue (Roboflow layout)."""
    return shapes_dataset(tmp_path_factory.mktemp("clean") / "data", train_images=2, val=True, size=(96, 64))


@pytest.fixture()
def dataset(clean_dataset, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(clean_dataset, root)
    return root


class Raw(str):
    """Text that replaces an annotation file's content as it is (not JSON of the edited data)."""


def _edit(path: Path, change: Callable[[dict], object]) -> None:
    """Apply `change` to the parsed JSON; a `Raw` it returns replaces the file's text instead."""
    data = json.loads(path.read_text())
    replaced = change(data)
    path.write_text(replaced if isinstance(replaced, Raw) else json.dumps(data))


def _finetune(capsys, root: Path, weights: Path, out: Path, *extra: str):
    return glip(capsys, "finetune", "--data", root, "--weights", weights, "--output", out, "--epochs", "1",
                "--cpu", "--no-progress", *extra)


# -- refused: one line naming the file and the problem, nothing written ------------------------------
def _absent(root: Path) -> None:
    (root / "train" / "img1.png").unlink()


REFUSED = {
    "malformed JSON": ("train", lambda d: Raw('{"images": ['), "not valid JSON (Expecting value at line 1, column 13)"),
    "malformed JSON in valid": ("valid", lambda d: Raw("[1, 2"), "not valid JSON"),
    "top level not an object": ("train", lambda d: Raw("[]"), "the top level is not an object"),
    "missing images key": ("train", lambda d: d.pop("images"), "no 'images' list"),
    "annotation without bbox": ("train", lambda d: d["annotations"][0].pop("bbox"), "annotation 1 has no 'bbox'"),
    "bbox not four numbers": ("train", lambda d: d["annotations"][1].update(bbox=[1, "2", 3, 4]),
                              "annotation 2: bbox must hold 4 finite numbers"),
    "unknown category id": ("train", lambda d: d["annotations"][0].update(category_id=99),
                            "annotation 1 has unknown category id 99"),
    "category id that is a list": ("train", lambda d: d["annotations"][0].update(category_id=[1]),
                                   "annotation 1: category_id must be a number or string, got list"),
    "unknown image id": ("valid", lambda d: d["annotations"][0].update(image_id=77),
                         "annotation 1 refers to unknown image id 77"),
    "two categories with the same name": ("train", lambda d: d["categories"][1].update(name="red"),
                                          "categories 1 and 2 are both named 'red'"),
    "image listed but absent": (None, _absent, "1 image file missing from"),
    "empty train split": ("train", lambda d: d.update(images=[], annotations=[]), "no images (the train split is empty)"),
    "empty valid split": ("valid", lambda d: d.update(images=[], annotations=[]), "no images (the valid split is empty)"),
    "train split without annotations": ("train", lambda d: d.update(annotations=[]),
                                        "no boxes to train on in the 2 images of the train split (no annotations at all)"),
    "train split with only zero-area boxes": (
        "train", lambda d: [a.update(bbox=[5, 5, 0, 9]) for a in d["annotations"]],
        "no boxes to train on in the 2 images of the train split (4 annotations, none usable: 4 without area"),
    "valid split without annotations": ("valid", lambda d: d.update(annotations=[]),
                                        "no boxes to evaluate against in the 2 images of the valid split"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_finetune_refuses_bad_data_in_one_line(dataset, tiny_weights, tmp_path, capsys, case):
    split, change, needle = REFUSED[case]
    if split is None:
        change(dataset)
        named = dataset / "train" / ANN
    else:
        named = dataset / split / ANN
        _edit(named, change)
    out = tmp_path / "run"
    code, _, err = _finetune(capsys, dataset, tiny_weights, out)
    assert_one_line_error(code, err, str(named), needle)
    assert not out.exists()


# -- handled as documented: cleaned, counted, trained ----------------------------------------------
def test_odd_boxes_are_clipped_dropped_and_counted(dataset, tiny_weights, tmp_path, capsys):
    def oddities(d):
        extra = [[80, 50, 40, 40],     # reaches past the right and bottom edges: clipped
                 [-6, 10, 20, 20],     # starts left of the image: clipped
                 [10, 10, 0, 20],      # zero width: dropped
                 [10, 10, 20, -4],     # negative height: dropped
                 [200, 10, 10, 10]]    # wholly outside: dropped
        for i, box in enumerate(extra):
            d["annotations"].append({"id": 100 + i, "image_id": 1, "category_id": 2, "bbox": box})
    _edit(dataset / "train" / ANN, oddities)
    out = tmp_path / "run"
    code, _, err = _finetune(capsys, dataset, tiny_weights, out)
    assert code == 0, err
    assert "train: 2 images, 6 boxes; dropped 3 zero-area/degenerate boxes; clipped 2 boxes to the image" in err
    stats = json.loads((out / "run.json").read_text())["data"]["train"]["stats"]
    assert (stats["annotations"], stats["boxes"], stats["degenerate"], stats["clipped"]) == (9, 6, 3, 2)
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_event = next(e for e in logged if e["event"] == "data" and e["split"] == "train")
    assert (train_event["degenerate"], train_event["clipped"]) == (3, 2)


def test_placeholder_category_is_not_a_class(dataset, tiny_weights, tmp_path, capsys):
    def placeholder(d):
        d["categories"].insert(0, {"id": 0, "name": "shapes", "supercategory": "none"})
    for split in ("train", "valid"):
        _edit(dataset / split / ANN, placeholder)
    out = tmp_path / "run"
    code, _, err = _finetune(capsys, dataset, tiny_weights, out)
    assert code == 0, err
    assert "ignored placeholder category 'shapes'" in err
    run = json.loads((out / "run.json").read_text())
    assert run["classes"] == ["red", "blue"] and run["caption"] == "red. blue"


def test_a_category_that_boxes_use_is_never_the_placeholder(dataset, tiny_weights, tmp_path, capsys):
    """Roboflow's placeholder (id 0, supercategory "none", named after the dataset) is recognised
    only while no box uses it; once labelled, it is a class like the others."""
    def boxed_placeholder(d):
        d["categories"].insert(0, {"id": 0, "name": "shapes", "supercategory": "none"})
        d["annotations"][0]["category_id"] = 0
    _edit(dataset / "train" / ANN, boxed_placeholder)
    code, _, err = _finetune(capsys, dataset, tiny_weights, tmp_path / "run")
    assert code == 0, err
    assert "placeholder" not in err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["classes"] == ["shapes", "red", "blue"]


def test_images_without_boxes_are_evaluated_not_trained(dataset, tiny_weights, tmp_path, capsys):
    _edit(dataset / "train" / ANN, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 2]))
    out = tmp_path / "run"
    code, _, err = _finetune(capsys, dataset, tiny_weights, out)
    assert code == 0, err
    assert "train: 2 images, 2 boxes; 1 image without boxes" in err
    assert json.loads((out / "run.json").read_text())["train_images"] == ["img0.png"]


# -- the bench reader: `glip bench coco` on a ground truth -------------------------------------------
BENCH_REFUSED = {
    "malformed JSON": (lambda d: Raw("{"), "not a readable COCO JSON file"),
    "missing key": (lambda d: d.pop("categories"), "not a COCO ground truth"),
    "annotation id that is an object": (lambda d: d["annotations"][0].update(id={"a": 1}),
                                        "annotations[0] needs an 'id' (a number or string)"),
    "category without a name": (lambda d: d["categories"][0].pop("name"), "category 1 has no name"),
    "unknown category id": (lambda d: d["annotations"][0].update(category_id=9), "annotation 1 has unknown category 9"),
    "two categories with the same name": (lambda d: d["categories"][1].update(name="red"),
                                          "categories 1 and 2 are both named 'red'"),
    "image listed but absent": (lambda d: d["images"].append({"id": 9, "file_name": "gone.png"}),
                                "1 of 3 image files are missing from"),
    "empty split": (lambda d: d.update(images=[], annotations=[]), "no images to evaluate (the split is empty)"),
    "no annotations at all": (lambda d: d.update(annotations=[]), "no annotations (boxes) at all"),
}


def _bench(capsys, root: Path, weights: Path, out: Path):
    return glip(capsys, "bench", "coco", "--ann", root / "valid" / ANN, "--images", root / "valid",
                "--weights", weights, "--output", out, "--device", "cpu", "-q")


@pytest.mark.parametrize("case", list(BENCH_REFUSED))
def test_bench_refuses_bad_ground_truth_in_one_line(dataset, tiny_weights, tmp_path, capsys, case):
    change, needle = BENCH_REFUSED[case]
    _edit(dataset / "valid" / ANN, change)
    out = tmp_path / "bench"
    code, _, err = _bench(capsys, dataset, tiny_weights, out)
    assert_one_line_error(code, err, str(dataset / "valid" / ANN), needle)
    assert not out.exists()


def test_bench_scores_a_ground_truth_with_a_placeholder_and_odd_boxes(dataset, tiny_weights, tmp_path, capsys):
    """The evaluation ground truth is scored as given (the official protocol: no clipping), and
    Roboflow's placeholder category is never a prompt class."""
    def odd(d):
        d["categories"].insert(0, {"id": 0, "name": "shapes", "supercategory": "none"})
        d["annotations"][0]["bbox"] = [80, 50, 40, 40]  # past the image edge
        d["annotations"][1]["bbox"] = [10, 10, 0, 5]  # no area
    _edit(dataset / "valid" / ANN, odd)
    out = tmp_path / "bench"
    code, _, err = _bench(capsys, dataset, tiny_weights, out)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"]["AP"] >= 0.0  # defined: there are boxes to score against
    spec = dataset_prompt_spec(load_ground_truth(dataset / "valid" / ANN))
    assert spec.names == ["red", "blue"]


# -- fuzz: random JSON-ish annotation files --------------------------------------------------------
_KEYS = ["images", "annotations", "categories", "id", "name", "file_name", "image_id", "category_id", "bbox",
         "width", "height", "iscrowd", "area", "supercategory"]
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([1e308, -0.0, 0.5, 1.5]),
                     st.sampled_from(["", "a", "a.png", "0", "x", "none", "red"]))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5)), max_leaves=12)


@st.composite
def _coco_documents(draw):
    """A valid small COCO file with a few parts replaced by random JSON values (or, rarely, any
    JSON value at all), so the readers' checks are reached at every depth."""
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
           "categories": [{"id": 1, "name": "red", "supercategory": "shapes"}]}
    if draw(st.integers(0, 19)) == 0:
        return draw(_json)
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(doc)))
        how = draw(st.integers(0, 3))
        if how == 0:
            doc[section] = draw(_json)
        elif not isinstance(doc[section], list):
            continue
        elif how == 1 or not doc[section]:
            doc[section].append(draw(_json))
        else:
            entry = doc[section][draw(st.integers(0, len(doc[section]) - 1))]
            if isinstance(entry, dict):
                entry[draw(st.sampled_from(_KEYS))] = draw(_json)
    return doc


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (20, 10)).save(folder / "a.png")
    return folder


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_coco_documents())
def test_fuzz_coco_readers_only_raise_glip_errors(fuzz_dir, doc):
    path = fuzz_dir / "ann.json"
    path.write_text(json.dumps(doc))
    for read in (lambda: load_coco(path, fuzz_dir, "train"),
                 lambda: load_coco(path, fuzz_dir, "valid", reference=load_coco(path, fuzz_dir)),
                 lambda: _bench_prepare(path)):
        try:
            read()
        except GlipError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc), str(exc)


def _bench_prepare(path: Path) -> None:
    """What `glip bench` does with a ground truth before running the model."""
    gt = load_ground_truth(path)
    require_evaluable(gt, str(path))
    map_classes(dataset_prompt_spec(gt, where=str(path)), gt, str(path))


@pytest.mark.parametrize("workers", ["0", "1"])
def test_image_that_fails_to_decode_mid_training_is_one_line(dataset, tiny_weights, tmp_path, capsys, workers):
    """Its header is fine (the data checks pass), its pixels are cut off: training stops at it
    with one line naming it, also when it is decoded in a data-loading worker process."""
    image = dataset / "train" / "img1.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    code, _, err = _finetune(capsys, dataset, tiny_weights, tmp_path / "run", "--num-workers", workers)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert f"error: {image}: not a readable image" in errors[0]
