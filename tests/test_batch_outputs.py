"""Batch inference (files, folders, globs, size-grouped batches, bad files, device/dtype, the
progress bar) and the outputs (JSON, COCO results through pycocotools, renderings, overwrite)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from glipcli.cli.main import main
from glipcli.data import batching
from glipcli.data.batching import ImageFailure, PreparedImage, group_by_size, iter_batches, loader_pool
from glipcli.data.sources import expand_image_args
from glipcli.device import resolve_device, resolve_dtype
from glipcli.errors import GlipError
from glipcli.predictor import GLIPPredictor
from golden_utils import golden_model, load

CLASSES = "person. bicycle. car. dog"
NAMES = ["person", "bicycle", "car", "dog"]


def _golden_args(golden_dir: Path) -> list[str]:
    tiny = golden_dir / "tiny"
    return ["--config", str(tiny / "config.yaml"), "--weights", str(tiny / "weights.safetensors")]


def _scores(result) -> torch.Tensor:
    return torch.tensor([d.score for d in result.detections])


def _boxes(result) -> torch.Tensor:
    return torch.tensor([d.box_xyxy for d in result.detections]).reshape(-1, 4)


# -- image arguments ------------------------------------------------------------------------------
@pytest.fixture()
def image_tree(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "C.PNG", "sub/d.png"):
        Image.new("RGB", (8, 6)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    return root


def test_folder_expands_to_its_images_sorted(image_tree):
    assert [p.name for p in expand_image_args([str(image_tree)])] == ["C.PNG", "a.jpg", "b.png"]


def test_globs_files_order_and_repeats(image_tree):
    got = expand_image_args([str(image_tree / "b.png"), str(image_tree / "**" / "*.png"),
                             str(image_tree / "notes.txt")])
    names = [p.relative_to(image_tree).as_posix() for p in got]
    # b.png stays first and is not repeated by the glob (case-sensitive, as in a shell: no
    # C.PNG); `**` reaches sub-folders; a file named explicitly is always tried.
    assert names == ["b.png", "sub/d.png", "notes.txt"]


@pytest.mark.parametrize("arg, needle", [("missing.jpg", "no such file or folder"),
                                         ("*.nothing", "matches no image files")])
def test_bad_image_arguments(tmp_path, monkeypatch, arg, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GlipError, match=needle):
        expand_image_args([arg])


def test_folder_without_images(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(GlipError, match="holds no images"):
        expand_image_args([str(tmp_path)])


def test_batches_group_equal_padded_sizes():
    def item(index, h, w):
        return PreparedImage(index, str(index), Image.new("RGB", (w, h)), torch.zeros(3, h, w), (h, w))

    # padded to 32: (336, 504)->(352, 512), (335, 501)->(352, 512), (448, 336)->(448, 352)
    items = [item(0, 336, 504), item(1, 448, 336), item(2, 335, 501), item(3, 448, 330), item(4, 336, 504)]
    batches = group_by_size(items, batch_size=2, size_divisible=32)
    assert [[i.index for i in b] for b in batches] == [[0, 2], [4, 1], [3]]
    assert sorted(i.index for b in group_by_size(items, 1, 32) for i in b) == [0, 1, 2, 3, 4]


def test_loader_threads_outlive_a_call_but_not_a_fork(monkeypatch):
    """A new loader thread pays torch's per-thread start on its first image, so every call reuses
    the process's threads; a forked child (another pid) gets its own pool."""
    from glipcli.config import InputConfig

    threads: list[int] = []
    prepare = batching.prepare_image

    def recording(*args):
        threads.append(threading.get_ident())
        return prepare(*args)

    monkeypatch.setattr(batching, "prepare_image", recording)
    image = Image.new("RGB", (40, 30))
    for _ in range(3):
        assert [len(b) for b in iter_batches([image, image], InputConfig(min_size=32, max_size=64), 1,
                                             workers=2)] == [1, 1]
    pool = loader_pool(2)
    assert pool is loader_pool(2) and set(threads) <= {t.ident for t in pool._threads}
    assert threading.get_ident() not in threads
    real_pid = batching.os.getpid()
    monkeypatch.setattr(batching.os, "getpid", lambda: real_pid + 1)
    assert loader_pool(2) is not pool


# -- batching against single-image runs -----------------------------------------------------------
@pytest.fixture(scope="module")
def predictor(golden_dir) -> GLIPPredictor:
    return GLIPPredictor(golden_model(str(golden_dir / "tiny")))


@pytest.fixture(scope="module")
def images(golden_dir) -> dict[str, Image.Image]:
    image = Image.open(golden_dir / "tiny" / "image.png").convert("RGB")
    return {
        "golden": image,
        # 590x395 resizes to 501x335: smaller than the golden 504x336 but padded to the same 512x352.
        "near": image.resize((590, 395), Image.Resampling.BILINEAR),
        "flipped": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        # 400x300 resizes to 448x336, padded to 448x352: smaller than the golden padded size.
        "crop": image.crop((100, 50, 500, 350)),
    }


@pytest.fixture(scope="module")
def alone(predictor, images):
    """Each image run on its own."""
    return {name: predictor.predict(im, CLASSES)[0] for name, im in images.items()}


def test_batch_size_one_is_unchanged(predictor, images, alone, golden_dir):
    results = predictor.predict(list(images.values()), CLASSES, batch_size=1)
    for name, result in zip(images, results):
        assert torch.equal(_scores(result), _scores(alone[name]))
        assert torch.equal(_boxes(result), _boxes(alone[name]))
    ref = load(str(golden_dir / "tiny" / "outputs_det.safetensors"))
    ref_scores = ref["final_scores"].sort(descending=True).values
    assert torch.allclose(_scores(results[0]), ref_scores, atol=1e-5)


def test_same_padded_size_batches_match_single_runs(predictor, images, alone):
    names = ["golden", "near", "flipped"]
    results = predictor.predict([images[n] for n in names], CLASSES, batch_size=3)
    for name, result in zip(names, results):
        assert len(result.detections) == len(alone[name].detections)
        assert torch.allclose(_scores(result), _scores(alone[name]), atol=1e-5)
        assert torch.allclose(_boxes(result), _boxes(alone[name]), atol=1e-2)
        assert [d.label for d in result.detections] == [d.label for d in alone[name].detections]


def test_mixed_size_batch_is_close(predictor, images, alone):
    """Padding reaches the model (attention, convolutions): the image padded further in the
    batch moves slightly; the largest keeps its own padding and is unchanged."""
    golden, crop = predictor.predict([images["golden"], images["crop"]], CLASSES, batch_size=2)
    assert (golden.width, crop.width) == (600, 400)  # results stay with their images
    assert torch.allclose(_scores(golden), _scores(alone["golden"]), atol=1e-5)
    assert len(crop.detections) == len(alone["crop"].detections)
    assert (_scores(crop) - _scores(alone["crop"])).abs().max() < 0.05
    assert all(0 <= d.box_xyxy[0] <= d.box_xyxy[2] <= 400 for d in crop.detections)


@pytest.mark.parametrize("cast_weights", [False, True], ids=["autocast", "cast-weights"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_is_close_and_post_processing_stays_float32(golden_dir, alone, images, dtype,
                                                                      cast_weights):
    import copy

    model = copy.deepcopy(golden_model(str(golden_dir / "tiny")))  # a cast would change the shared one
    predictor = GLIPPredictor(model, dtype=dtype, cast_weights=cast_weights)
    weights = {p.dtype for p in model.parameters()}
    assert weights == ({resolve_dtype(dtype)} if cast_weights else {torch.float32})
    assert predictor.cast_weights == cast_weights
    if cast_weights:  # the default on the CPU
        assert GLIPPredictor(copy.deepcopy(model), dtype=dtype).cast_weights
    (result,) = predictor.predict(images["golden"], CLASSES)
    ref = alone["golden"]
    assert len(result.detections) == len(ref.detections)
    assert (_scores(result) - _scores(ref)).abs().max() < 0.02
    assert result.detections[0].label == ref.detections[0].label
    assert torch.allclose(_boxes(result)[0], _boxes(ref)[0], atol=1.0)
    prompt = predictor.encode_classes(CLASSES)
    batch = torch.zeros(1, 3, 64, 64)
    (dets,) = predictor.detect_tensor(batch, [(64, 64)], prompt)
    assert dets.scores.dtype == torch.float32 and dets.boxes.dtype == torch.float32


# -- device and dtype -------------------------------------------------------------------------------
def test_auto_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"


def test_unavailable_or_unknown_device_and_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GlipError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(GlipError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(GlipError, match="float16, bfloat16"):
        resolve_dtype("int8")
    assert resolve_dtype("bfloat16") is torch.bfloat16


# -- progress bar -----------------------------------------------------------------------------------
def _fake_items(count):
    for i in range(count):
        yield PreparedImage(i, f"im{i}", Image.new("RGB", (4, 4)), torch.zeros(3, 4, 4), (4, 4)), f"result{i}"
    yield ImageFailure(count, "bad.jpg", "bad.jpg: not a readable image (truncated)")


@pytest.mark.parametrize("terminal, quiet, shown", [(True, False, True), (True, True, False),
                                                    (False, False, False)])
def test_progress_bar_only_on_a_terminal_and_not_quiet(monkeypatch, terminal, quiet, shown):
    from rich.console import Console

    from glipcli.cli import common

    buffer = io.StringIO()
    monkeypatch.setattr(common, "stderr", Console(file=buffer, force_terminal=terminal, width=100))
    outcome = common.run_images(_fake_items(3), total=4, quiet=quiet)
    assert outcome.results == ["result0", "result1", "result2"]
    assert [f.source for f in outcome.failures] == ["bad.jpg"]
    text = buffer.getvalue()
    assert ("3/4" in text or "4/4" in text) is shown
    assert "error: bad.jpg: not a readable image" in text  # failures are reported even when quiet


# -- bad files in a folder --------------------------------------------------------------------------
@pytest.fixture()
def mixed_folder(tmp_path, golden_dir):
    folder = tmp_path / "mixed"
    folder.mkdir()
    image = Image.open(golden_dir / "tiny" / "image.png").convert("RGB")
    image.save(folder / "a_good.png")
    (folder / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "c_good.jpg")
    (folder / "d_empty.png").write_bytes(b"")
    return folder


def test_folder_with_bad_files_processes_the_good_ones(mixed_folder, golden_dir, tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(["detect", str(mixed_folder), *_golden_args(golden_dir), "-p", CLASSES, "--json", str(out),
                 "--batch-size", "2"])
    assert code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, stderr
    assert "b_broken.jpg" in errors[0] and "d_empty.png" in errors[1]
    assert "2 of 4 images could not be read" in errors[2]
    data = json.loads(out.read_text())
    assert [Path(r["image"]).name for r in data] == ["a_good.png", "c_good.jpg"]
    assert all(r["detections"] for r in data)


def test_strict_stops_at_the_first_bad_file(mixed_folder, golden_dir, tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(["detect", str(mixed_folder), *_golden_args(golden_dir), "-p", CLASSES,
                 "--json", str(out), "--strict"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b_broken.jpg" in err
    assert not out.exists()


# -- outputs ----------------------------------------------------------------------------------------
def _write_gt(path: Path, file_names: list[str]) -> Path:
    categories = [{"id": 10 + i, "name": name} for i, name in enumerate(NAMES)]
    images = [{"id": 100 + i, "file_name": name, "width": 600, "height": 400} for i, name in enumerate(file_names)]
    annotations = [
        {"id": 1, "image_id": 100, "category_id": 11, "bbox": [530.0, 99.0, 69.0, 77.0], "area": 5313.0, "iscrowd": 0},
        {"id": 2, "image_id": 101, "category_id": 13, "bbox": [0.0, 0.0, 69.0, 77.0], "area": 5313.0, "iscrowd": 0},
    ]
    path.write_text(json.dumps({"images": images, "categories": categories, "annotations": annotations}))
    return path


@pytest.fixture(scope="module")
def coco_run(golden_dir, tmp_path_factory):
    """One detect run over a folder of two images writing every output."""
    root = tmp_path_factory.mktemp("coco")
    folder = root / "val"
    folder.mkdir()
    image = Image.open(golden_dir / "tiny" / "image.png").convert("RGB")
    image.save(folder / "0001.png")
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "0002.jpg")
    gt = _write_gt(root / "gt.json", ["val/0001.png", "val/0002.jpg"])
    paths = {"json": root / "out.json", "coco": root / "coco.json", "vis": root / "vis", "gt": gt,
             "folder": folder}
    code = main(["detect", str(folder), *_golden_args(golden_dir), "-p", CLASSES, "--box-threshold", "0.6",
                 "--json", str(paths["json"]), "--coco-results", str(paths["coco"]), "--coco-gt", str(gt),
                 "--save-vis", str(paths["vis"]), "--batch-size", "2", "-q"])
    assert code == 0
    return paths


def test_json_schema_is_stable(coco_run):
    data = json.loads(coco_run["json"].read_text())
    assert [Path(r["image"]).name for r in data] == ["0001.png", "0002.jpg"]
    for result in data:
        assert set(result) == {"image", "width", "height", "caption", "detections"}
        assert result["caption"] == "person. bicycle. car. dog"
        for det in result["detections"]:
            assert set(det) == {"box_xyxy", "score", "label", "phrase_index"}
            assert det["score"] >= 0.6 and det["label"] == NAMES[det["phrase_index"]]


def test_coco_results_match_the_json_and_evaluate_in_pycocotools(coco_run):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = json.loads(coco_run["json"].read_text())
    results = json.loads(coco_run["coco"].read_text())
    expected = [(100 + i, 10 + d["phrase_index"], d["box_xyxy"], d["score"])
                for i, r in enumerate(data) for d in r["detections"]]
    assert len(results) == len(expected) > 0
    for entry, (image_id, category_id, (x0, y0, x1, y1), score) in zip(results, expected):
        assert set(entry) == {"image_id", "category_id", "bbox", "score"}
        assert (entry["image_id"], entry["category_id"], entry["score"]) == (image_id, category_id, score)
        # the official GLIP evaluation's xyxy -> xywh conversion (maskrcnn_benchmark, +1)
        assert entry["bbox"] == pytest.approx([x0, y0, x1 - x0 + 1, y1 - y0 + 1])

    gt = COCO(str(coco_run["gt"]))
    dt = gt.loadRes(str(coco_run["coco"]))
    evaluator = COCOeval(gt, dt, "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats.shape == (12,)
    assert len(dt.getAnnIds()) == len(results)


def test_save_vis_renders_every_image(coco_run):
    from glipcli.visualize import class_colour

    data = json.loads(coco_run["json"].read_text())
    files = sorted(p.name for p in coco_run["vis"].iterdir())
    assert files == ["0001.png", "0002.jpg"]
    source = Image.open(coco_run["folder"] / "0001.png").convert("RGB")
    rendered = Image.open(coco_run["vis"] / "0001.png").convert("RGB")
    assert rendered.size == source.size
    assert rendered.tobytes() != source.tobytes()
    # The best detection is drawn last (on top): its bottom edge shows its class colour.
    best = data[0]["detections"][0]
    x0, _, x1, y1 = best["box_xyxy"]
    x_mid, bottom = int((x0 + x1) / 2), min(int(y1), rendered.height - 1)
    edge = {rendered.getpixel((x_mid, y)) for y in range(bottom - 2, bottom + 1)}
    assert class_colour(best["phrase_index"]) in edge


def test_class_colours_are_distinct_and_labels_legible():
    from glipcli.visualize import class_colour, text_colour

    colours = [class_colour(i) for i in range(12)]
    for i in range(12):
        for j in range(i + 1, 12):
            distance = sum((a - b) ** 2 for a, b in zip(colours[i], colours[j])) ** 0.5
            assert distance > 40, (i, j, colours[i], colours[j])
    assert text_colour((250, 250, 40)) == (0, 0, 0) and text_colour((20, 20, 160)) == (255, 255, 255)


def test_render_draws_the_box_in_the_class_colour():
    from glipcli.visualize import DrawBox, class_colour, render

    canvas = render(Image.new("RGB", (200, 150), (128, 128, 128)), [DrawBox([40, 60, 160, 140], "dog 0.91", 3)])
    assert canvas.getpixel((100, 139)) == class_colour(3)  # bottom edge
    assert canvas.getpixel((100, 100)) == (128, 128, 128)  # inside untouched


@pytest.mark.parametrize("option", ["--json", "--coco-results", "--save-vis"])
def test_existing_outputs_are_never_replaced(coco_run, golden_dir, option):
    target = {"--json": coco_run["json"], "--coco-results": coco_run["coco"], "--save-vis": coco_run["vis"]}[option]
    watched = target / "0001.png" if option == "--save-vis" else target
    before = watched.read_bytes()
    args = ["detect", str(coco_run["folder"]), *_golden_args(golden_dir), "-p", CLASSES, option, str(target)]
    if option == "--coco-results":
        args += ["--coco-gt", str(coco_run["gt"])]
    assert main(args) == 2
    assert watched.read_bytes() == before


def test_coco_ids_are_checked_before_inference(coco_run, golden_dir, tmp_path, capsys):
    gt = _write_gt(tmp_path / "gt.json", ["val/0001.png"])
    code = main(["detect", str(coco_run["folder"]), *_golden_args(golden_dir), "-p", CLASSES,
                 "--coco-results", str(tmp_path / "c.json"), "--coco-gt", str(gt)])
    assert code == 2 and "0002.jpg: not among the images of gt.json" in capsys.readouterr().err
    code = main(["detect", str(coco_run["folder"]), *_golden_args(golden_dir), "-p", "person. zebra",
                 "--coco-results", str(tmp_path / "c.json"), "--coco-gt", str(coco_run["gt"])])
    assert code == 2 and "class 'zebra' is not a category of gt.json" in capsys.readouterr().err
    code = main(["detect", str(coco_run["folder"]), *_golden_args(golden_dir), "-p", CLASSES,
                 "--coco-results", str(tmp_path / "c.json")])
    assert code == 2 and "--coco-gt" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_detect_reads_a_classes_file_and_chunks_it(golden_dir, tmp_path):
    names_file = tmp_path / "names.txt"
    names_file.write_text("# four classes\nperson\nbicycle\n\ncar\ndog\n")
    out = tmp_path / "out.json"
    code = main(["detect", str(golden_dir / "tiny" / "image.png"), *_golden_args(golden_dir),
                 "--classes-file", str(names_file), "--chunk-size", "2", "--box-threshold", "0.5",
                 "--json", str(out), "-q"])
    assert code == 0
    (result,) = json.loads(out.read_text())
    assert result["detections"]
    assert {d["label"] for d in result["detections"]} <= set(NAMES)
    assert all(d["label"] == NAMES[d["phrase_index"]] and d["score"] >= 0.5 for d in result["detections"])
    code = main(["detect", str(golden_dir / "tiny" / "image.png"), *_golden_args(golden_dir),
                 "--classes-file", str(names_file), "-p", "dog"])
    assert code == 2
