"""`glip bench`: the ODinW-style runner (zero-shot, few-shot cells, resume, missing datasets) on small
subsets of the shared real datasets, and `bench coco` / `bench lvis` / `bench flickr30k` end to end on
fixtures written here in the official formats. The model side runs the reduced reference GLIP-T (golden
weights) on 128-160 px images; "perfect" detectors (the ground truth fed through the pipeline) check the
plumbing with hand-known metrics: class -> category maps, the +1 box convention of COCO / ODinW and none
for LVIS."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from glipcli.bench import runner, split_eval, standard
from glipcli.evaluation.detection import map_classes
from glipcli.bench.model import BenchModel
from glipcli.data.odinw.registry import name_key
from glipcli.bench.runner import OdinwRequest, parse_int_list, run_odinw
from glipcli.bench.standard import PredictionLog
from glipcli.checkpoint import save_safetensors
from glipcli.cli.main import main
from glipcli.errors import GlipError
from glipcli.predictor import Detection
from glipcli.prompts.prompt_file import ClassPrompt, PromptSpec
from glipcli.weights import ModelSource, load_model
from glipcli.yacs_config import config_from_yacs


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(golden_dir):
    """The reduced reference GLIP-T (golden weights: it detects something) on 128-160 px images."""
    cfg = config_from_yacs(golden_dir / "tiny" / "config.yaml")
    cfg = dataclasses.replace(cfg, name="tiny-golden", input=dataclasses.replace(cfg.input, min_size=128, max_size=160))
    return load_model(ModelSource(cfg, golden_dir / "tiny" / "weights.safetensors")).eval()


@pytest.fixture(scope="module")
def tiny_weights(tiny, tmp_path_factory):
    """The tiny model as a glip safetensors file (its config, 128-160 px images, travels with it)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_safetensors(tiny, path)
    return path


def _subset(src: Path, dst: Path, counts: dict[str, int]) -> None:
    """The smallest images of each split of a Roboflow-layout dataset, with their annotations."""
    for split, n in counts.items():
        data = json.loads((src / split / "_annotations.coco.json").read_text())
        images = sorted(data["images"], key=lambda im: (im["width"] * im["height"], im["id"]))[:n]
        keep = {im["id"] for im in images}
        data["images"] = images
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        (dst / split).mkdir(parents=True)
        for im in images:
            shutil.copy(src / split / im["file_name"], dst / split / im["file_name"])
        (dst / split / "_annotations.coco.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def real_data(shared_dir, tmp_path_factory):
    """raccoon, pothole (3 train / 2 valid images) and chess_pieces (2 valid) from ../shared/data/real."""
    root = tmp_path_factory.mktemp("real")
    real = shared_dir / "data" / "real"
    _subset(real / "raccoon", root / "raccoon", {"train": 3, "valid": 2})
    _subset(real / "pothole", root / "pothole", {"train": 3, "valid": 2})
    _subset(real / "chess_pieces", root / "chess_pieces", {"valid": 2})
    return root


def _suite(tmp_path: Path, real_data: Path, extra: str = "") -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(f"name: real-pair\ndatasets:\n  - {{name: raccoon, root: {real_data / 'raccoon'}}}\n"
                    f"  - {{name: pothole, root: {real_data / 'pothole'}}}\n{extra}")
    return path


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _gt_boxes(ann_files, img_dir: Path | None = None) -> dict[str, list[tuple[str, list[float]]]]:
    """Absolute image path -> [(category name, COCO bbox)] of COCO files (images in `img_dir`, else beside
    each file)."""
    found: dict[str, list] = {}
    for ann in ann_files:
        data = json.loads(Path(ann).read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        folder = img_dir or Path(ann).parent
        files = {im["id"]: str((folder / im["file_name"]).resolve()) for im in data["images"]}
        for a in data["annotations"]:
            found.setdefault(files[a["image_id"]], []).append((names[a["category_id"]], a["bbox"]))
    return found


def perfect_detector(boxes, plus_one: bool = True, shift: dict | None = None, seen: list | None = None):
    """A stand-in for `split_eval.detect_images` returning the ground-truth boxes as detections, as xyxy
    boxes that the convention turns back into the exact COCO boxes (`shift`: category -> dx moved)."""
    shift = shift or {}

    def fake(predictor, paths, spec, *, batch_size=1, chunk_size=None):
        if seen is not None:
            seen.append({"chunk_size": chunk_size, "max_detections": predictor.cfg.postprocess.max_detections,
                         "spec": spec})
        keys = {name_key(c.name): i for i, c in enumerate(spec.classes)}
        for index, path in enumerate(paths):
            dets = []
            for name, (x, y, w, h) in boxes.get(str(Path(path).resolve()), []):
                x += shift.get(name, 0)
                extra = 1 if plus_one else 0
                dets.append(Detection([x, y, x + w - extra, y + h - extra], 0.9, name, keys[name_key(name)]))
            yield index, dets
    return fake


# -- units ---------------------------------------------------------------------------------------------------
def test_parse_int_list_and_request_checks(tmp_path):
    assert parse_int_list("1, 3,5,3", "--shots") == [1, 3, 5]
    assert parse_int_list(None, "--shots") == []
    with pytest.raises(GlipError, match="--seeds must be whole numbers"):
        parse_int_list("3,x", "--seeds")
    with pytest.raises(GlipError, match="--shots must be whole numbers >= 1"):
        run_odinw(OdinwRequest(suite="odinw13", shots=[0]))
    with pytest.raises(GlipError, match="--mode must be one of full, prompt, linear"):
        run_odinw(OdinwRequest(suite="odinw13", shots=[1], modes=["lora"]))
    with pytest.raises(GlipError, match="--seeds, --epochs only apply to fine-tuning cells"):
        run_odinw(OdinwRequest(suite="odinw13", zero_shot=True, seeds=[3], epochs=2))


def test_bench_model_labels_and_paper_presets():
    assert (BenchModel().label, BenchModel().paper_model) == ("glip-t", "glip-t")
    assert BenchModel(model="GLIP-L").paper_model == "glip-l"
    official = BenchModel(model="glip-t", weights="dl/glip_tiny_model_o365_goldg_cc_sbu.pth")
    assert official.paper_model == "glip-t" and official.label == "glip-t+glip_tiny_model_o365_goldg_cc_sbu.pth"
    assert BenchModel(weights="dl/glip_large_model.pth").paper_model == "glip-l"
    assert BenchModel(model="glip-t", weights="finetuned.pth").paper_model is None
    assert BenchModel(model="glip-t", weights="dl/glip_large_model.pth").paper_model is None
    assert BenchModel(model="glip-t", config="c.yaml", weights="w.pth").paper_model is None
    assert BenchModel(model="runs/m.safetensors").paper_model is None
    assert BenchModel(model="runs/m.safetensors").label == "m.safetensors"


def test_classes_map_to_categories_by_name_order_or_not_at_all():
    spec = PromptSpec(classes=[ClassPrompt("white king"), ClassPrompt("black pawn")])
    gt = {"categories": [{"id": 0, "name": "pieces", "supercategory": "none"},
                         {"id": 1, "name": "black-pawn", "supercategory": "pieces"},
                         {"id": 2, "name": "white-king", "supercategory": "pieces"},
                         {"id": 3, "name": "  ", "supercategory": "pieces"}],
          "annotations": [{"category_id": 1}, {"category_id": 2}]}
    assert map_classes(spec, gt).category_ids == [2, 1]  # placeholder 0 and blank 3 are never targets
    # a grounded text may name the category when the label does not
    shroom = PromptSpec(classes=[ClassPrompt("CoW", text="flat mushroom"), ClassPrompt("chanterelle")])
    gt2 = {"categories": [{"id": 1, "name": "flat_mushroom"}, {"id": 2, "name": "chanterelle"}], "annotations": []}
    assert map_classes(shroom, gt2).category_ids == [1, 2]
    # names that differ: by order when the counts agree (and a note says so) ...
    gt3 = {"categories": [{"id": 5, "name": "kingW"}, {"id": 7, "name": "black pawn"}], "annotations": []}
    mapped = map_classes(spec, gt3)
    assert mapped.category_ids == [5, 7] and "by order" in mapped.notes[0]
    # ... else an error naming the class and the categories
    gt4 = {"categories": [{"id": 5, "name": "kingW"}, {"id": 6, "name": "x"}, {"id": 7, "name": "black pawn"}],
           "annotations": []}
    with pytest.raises(GlipError, match=r"'white king' match no category by name \(categories 5: 'kingW'"):
        map_classes(spec, gt4)
    # a category with boxes that no class detects is noted (its AP counts as 0)
    gt5 = {"categories": [{"id": 1, "name": "white king"}, {"id": 2, "name": "black pawn"},
                          {"id": 3, "name": "rook"}], "annotations": [{"category_id": 3}]}
    assert map_classes(spec, gt5).uncovered == ["rook"]


def test_prediction_log_resumes_and_cuts_a_damaged_tail(tmp_path):
    path = tmp_path / "out" / "predictions.jsonl"
    log = PredictionLog(path, {"model": "a"})
    log.append(1, [[1, 0, 0, 1, 1, 0.5]])
    log.append(2, [])
    with open(path, "a") as f:
        f.write('{"key": "3", "val')  # an interrupted write
    again = PredictionLog(path, {"model": "a"})
    assert 1 in again and 2 in again and 3 not in again
    again.append(3, [])
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()[1:]] == ["1", "2", "3"]
    with pytest.raises(GlipError, match="different run: model='a' \\(now 'b'\\)"):
        PredictionLog(path, {"model": "b"})


# -- ODinW-style suites -------------------------------------------------------------------------------------------
def test_suite_few_shot_end_to_end(tiny, real_data, tmp_path, monkeypatch):
    """Two real datasets, 1 shot, two seeds: four fine-tuned cells, tables with mean ± std over seeds."""
    out = tmp_path / "out"
    request = OdinwRequest(suite=str(_suite(tmp_path, real_data)), shots=[1], seeds=[3, 30], epochs=1, output=out)
    report = run_odinw(request, BenchModel(glip=tiny, device="cpu"))
    assert [k.file_stem for k in report.evaluated] == [
        "raccoon__shot1__seed3__full__names", "raccoon__shot1__seed30__full__names",
        "pothole__shot1__seed3__full__names", "pothole__shot1__seed30__full__names"]
    assert all(p.is_file() for p in (report.files.json, report.files.csv, report.files.markdown))
    data = json.loads(report.files.json.read_text())
    assert data["run"]["suite"] == "real-pair" and data["run"]["training"]["epochs"] == 1
    assert len(data["cells"]) == 4
    info = data["cells"][0]["info"]
    assert info["sampler"] == "seeded sampler" and info["train_images"] >= 1 and info["eval_split"] == "val"
    assert info["best_epoch"] == 1 and info["train_config"]["shots"] == 1 and info["train_config"]["copies"] == 8
    assert info["images"] == 2 and 0.0 <= data["cells"][0]["ap"] <= 1.0
    rows = {(r["dataset"], r["setting"]): r for r in data["summary"]["rows"]}
    for name in ("raccoon", "pothole", "Average"):
        row = rows[(name, "1-shot, full, names")]
        assert row["seeds"] == [3, 30] and row["ap"]["n"] == 2 and row["ap"]["std"] is not None
    assert "| raccoon |" in report.files.markdown.read_text()
    assert report.files.csv.read_text().splitlines()[0].startswith("dataset,setting,shots,mode,prompts,seeds")
    # each cell trained in its own run folder; weights and checkpoints were dropped once recorded
    run_dir = out / "runs" / "pothole__shot1__seed30__full__names"
    assert (run_dir / "metrics.json").is_file() and (run_dir / "log.jsonl").is_file()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "model_best.safetensors").exists()
    # a re-run trains nothing
    monkeypatch.setattr("glipcli.engine.trainer.Trainer.fit", lambda self: pytest.fail("trained again"))
    again = run_odinw(request, BenchModel(glip=tiny, device="cpu"))
    assert again.evaluated == [] and len(again.skipped) == 4


def test_zero_shot_cells_and_resume_skip_finished_cells(tiny, real_data, tmp_path, monkeypatch):
    evaluated = []
    original = runner.evaluate

    def counting(predictor, d, split, spec, run, label):
        evaluated.append(d.name)
        return original(predictor, d, split, spec, run, label)

    monkeypatch.setattr(runner, "evaluate", counting)
    out = tmp_path / "out"
    request = OdinwRequest(suite=str(_suite(tmp_path, real_data)), output=out)  # nothing asked: zero-shot
    model = BenchModel(glip=tiny, device="cpu")
    first = run_odinw(request, model)
    assert evaluated == ["raccoon", "pothole"]
    assert [(k.shots, k.seed, k.mode, k.prompts) for k in first.evaluated] == [(0, None, "zero-shot", "names")] * 2
    cell = json.loads((out / "cells" / "pothole__zero__zero-shot__names.json").read_text())
    assert cell["info"]["images"] == 2 and cell["info"]["eval_split"] == "val" and cell["info"]["category_ids"] == [1]
    assert 0 < cell["info"]["detections"] <= 2 * 100  # the model's per-image cap
    assert set(cell["metrics"]) >= {"AP", "AP50", "AP75", "APs", "AR100"}

    second = run_odinw(request, model)
    assert evaluated == ["raccoon", "pothole"] and second.evaluated == [] and len(second.skipped) == 2
    (out / "cells" / "pothole__zero__zero-shot__names.json").unlink()
    third = run_odinw(request, model)
    assert evaluated == ["raccoon", "pothole", "pothole"] and len(third.skipped) == 1
    assert "| Average |" in third.files.markdown.read_text()
    with pytest.raises(GlipError, match="different run"):
        run_odinw(request, BenchModel(glip=tiny, device="cpu", name="another-model"))


def test_interrupted_cell_resumes_and_finished_training_is_only_evaluated(tiny, real_data, tmp_path, monkeypatch):
    from glipcli.engine.trainer import Trainer

    out = tmp_path / "out"
    request = OdinwRequest(suite=str(_suite(tmp_path, real_data)), datasets=["raccoon"], shots=[1], seeds=[3],
                           epochs=2, output=out, keep_weights=True)
    original = Trainer._end_epoch

    def stop_after_first_epoch(self, epoch):
        original(self, epoch)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_odinw(request, BenchModel(glip=tiny, device="cpu"))
    monkeypatch.setattr(Trainer, "_end_epoch", original)
    run_dir = out / "runs" / "raccoon__shot1__seed3__full__names"
    assert (run_dir / "checkpoints").is_dir() and not (out / "cells").exists()

    report = run_odinw(request, BenchModel(glip=tiny, device="cpu"))
    events = [json.loads(line)["event"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert "resume" in events and events.count("start") == 1
    cell = json.loads((out / "cells" / "raccoon__shot1__seed3__full__names.json").read_text())
    assert cell["info"]["epochs_run"] == 2 and report.evaluated
    assert (run_dir / "model_best.safetensors").is_file()  # --keep-weights

    # the cell's result lost (e.g. a crash before it was written): only the evaluation runs again
    (out / "cells" / "raccoon__shot1__seed3__full__names.json").unlink()
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("trained again"))
    again = run_odinw(request, BenchModel(glip=tiny, device="cpu"))
    assert len(again.evaluated) == 1
    assert json.loads((out / "cells" / "raccoon__shot1__seed3__full__names.json").read_text())["ap"] == cell["ap"]


def test_official_layout_prepared_fewshot_file_and_test_split(tiny, real_data, tmp_path):
    """The official ODinW layout: the prepared fewshot_train_shot1_seed3.json is trained on as it is (with
    the official 1-shot schedule); seed 30 has no prepared file, so the seeded sampler draws it; the best
    model is scored on the test split."""
    from glipcli.data.odinw.registry import odinw_dataset

    entry = odinw_dataset("Raccoon", "odinw13")
    data = tmp_path / "DATA"
    for split, src in (("train", "train"), ("val", "valid"), ("test", "valid")):
        dst = data / entry.splits[split].img_dir
        shutil.copytree(real_data / "raccoon" / src, dst)
        (dst / "_annotations.coco.json").rename(dst / "annotations_without_background.json")
    train = json.loads((data / entry.splits["train"].ann_file).read_text())
    chosen = train["images"][-1]
    prepared = {**train, "images": [chosen], "annotations": [a for a in train["annotations"]
                                                             if a["image_id"] == chosen["id"]]}
    (data / entry.fewshot_file(1, 3).path).write_text(json.dumps(prepared))
    report = run_odinw(OdinwRequest(suite="odinw13", datasets=["Raccoon"], data_root=data, shots=[1], seeds=[3, 30],
                                    epochs=1, output=tmp_path / "out"), BenchModel(glip=tiny, device="cpu"))
    cells = {c.key.seed: c for c in report_cells(report)}
    assert cells[3].info["sampler"] == "prepared file" and cells[30].info["sampler"] == "seeded sampler"
    assert cells[3].info["fewshot_file"].endswith("fewshot_train_shot1_seed3.json")
    assert (cells[3].info["train_config"]["copies"], cells[3].info["train_config"]["val_shots"]) == (8, 1)
    assert all(c.info["eval_split"] == "test" and c.info["val_split"] == "val" for c in cells.values())
    assert cells[3].key.prompts == "manual" and cells[3].info["layout"] == "official"
    run = json.loads((tmp_path / "out" / "runs" / "Raccoon__shot1__seed3__full__manual" / "run.json").read_text())
    assert run["train_images"] == [chosen["file_name"]]


def report_cells(report):
    from glipcli.bench.results import ResultsStore

    return ResultsStore(report.output).cells()


def test_prompt_and_linear_modes(tiny, real_data, tmp_path):
    out = tmp_path / "out"
    request = OdinwRequest(suite=str(_suite(tmp_path, real_data)), datasets=["pothole"], shots=[1], seeds=[3],
                           modes=["prompt", "linear"], epochs=1, output=out)
    report = run_odinw(request, BenchModel(glip=tiny, device="cpu"))
    assert [(k.mode, k.seed) for k in report.evaluated] == [("prompt", 3), ("linear", 3)]
    assert (out / "runs" / "pothole__shot1__seed3__prompt__names" / "adapter_best.safetensors").is_file()
    settings = {r.setting.label for r in report.summary.rows}
    assert settings == {"1-shot, prompt, names", "1-shot, linear, names"}


def test_missing_datasets_are_an_error_unless_skipped(tiny_weights, real_data, tmp_path, capsys):
    suite = _suite(tmp_path, real_data, extra=f"  - {{name: ghost, root: {tmp_path / 'nowhere'}}}\n")
    out = tmp_path / "out"
    args = ["bench", "odinw", "--suite", str(suite), "--weights", str(tiny_weights), "--device", "cpu",
            "--output", str(out)]
    code, _, err = _cli(capsys, *args)
    assert code == 2 and "1 dataset missing: ghost: no Roboflow export found" in err
    assert "nowhere" in err and "--skip-missing" in err and not (out / "cells").exists()
    code, stdout, err = _cli(capsys, *args, "--skip-missing")
    assert code == 0, err
    assert "skipping ghost" in err and "raccoon" in stdout
    rows = {line.split(",")[0]: line for line in (out / "results.csv").read_text().splitlines()[1:]}
    assert set(rows) == {"raccoon", "pothole", "ghost", "Average"}
    assert ",,," in rows["ghost"] and rows["Average"].endswith("2/3 datasets")  # no average over 2 of 3


def test_odinw_registry_datasets_with_official_prompts(tiny_weights, real_data, tmp_path, capsys):
    """Roboflow exports under --data-root found by their ODinW names; manual and plain prompt cells."""
    out = tmp_path / "out"
    base = ["bench", "odinw", "--datasets", "Raccoon,pothole", "--data-root", str(real_data), "--weights",
            str(tiny_weights), "--device", "cpu", "--output", str(out), "-q"]
    assert _cli(capsys, *base)[0] == 0
    assert _cli(capsys, *base, "--prompts", "plain")[0] == 0
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == ["Raccoon__zero__zero-shot__manual.json", "Raccoon__zero__zero-shot__plain.json",
                     "pothole__zero__zero-shot__manual.json", "pothole__zero__zero-shot__plain.json"]
    manual = json.loads((out / "cells" / "pothole__zero__zero-shot__manual.json").read_text())
    assert manual["info"]["prompt_file"].endswith("prompts/odinw/manual/pothole.yaml")
    assert manual["info"]["layout"] == "roboflow"
    code, _, err = _cli(capsys, "bench", "odinw", "--datasets", "Aquarium", "--data-root", str(real_data),
                        "--weights", str(tiny_weights), "--output", str(tmp_path / "o2"))
    assert code == 2 and f"1 of 1 ODinW datasets missing under {real_data} (Aquarium)" in err
    assert f"glip data download odinw --datasets Aquarium --root {real_data}" in err
    code, _, err = _cli(capsys, "bench", "odinw", "--suite", str(_suite(tmp_path, real_data)), "--prompts", "plain",
                        "--weights", str(tiny_weights), "--output", str(tmp_path / "o3"))
    assert code == 2 and "--prompts applies to the ODinW suites" in err


def test_perfect_detections_score_ap_one_through_the_runner(tiny, real_data, tmp_path, monkeypatch):
    """The ground truth fed back as detections gives AP 1.0 on raccoon, pothole and on ChessPieces, whose
    manual prompt says `white king` where the export says `white-king` (mapped by name)."""
    anns = [real_data / n / "valid" / "_annotations.coco.json" for n in ("raccoon", "pothole", "chess_pieces")]
    monkeypatch.setattr(split_eval, "detect_images", perfect_detector(_gt_boxes(anns)))
    model = BenchModel(glip=tiny, device="cpu")
    report = run_odinw(OdinwRequest(suite=str(_suite(tmp_path, real_data)), output=tmp_path / "a"), model)
    assert [r.ap.mean for r in report.summary.rows] == [pytest.approx(100.0)] * 3
    chess = run_odinw(OdinwRequest(suite="odinw35", datasets=["ChessPieces"], data_root=real_data,
                                   output=tmp_path / "b"), model)
    (row, _avg) = chess.summary.rows
    assert row.dataset == "ChessPieces" and row.ap.mean == pytest.approx(100.0)
    # an official preset gets the paper's numbers beside ours (Table 12, manual prompts)
    monkeypatch.setattr(BenchModel, "paper_model", property(lambda self: "glip-t"))
    official = run_odinw(OdinwRequest(suite="odinw13", datasets=["Raccoon", "pothole"], data_root=real_data,
                                      output=tmp_path / "d"), model)
    assert [(r.dataset, r.paper is not None) for r in official.summary.rows] == [
        ("Raccoon", True), ("pothole", True), ("Average", False)]  # the paper's average needs all 13 datasets
    assert "zero-shot, manual: paper AP" in official.files.markdown.read_text()
    monkeypatch.undo()
    # off by one pixel (w = x2 - x1 instead of the official x2 - x1 + 1): no longer perfect
    monkeypatch.setattr(split_eval, "detect_images", perfect_detector(_gt_boxes(anns), plus_one=False))
    off = run_odinw(OdinwRequest(suite="odinw35", datasets=["ChessPieces"], data_root=real_data,
                                 output=tmp_path / "c"), model)
    assert off.summary.rows[0].ap.mean < 99.0


# -- COCO / LVIS / Flickr30K fixtures ------------------------------------------------------------------------------
def _draw(path: Path, size=(160, 128), boxes=()) -> None:
    image = Image.new("RGB", size, (120, 120, 120))
    draw = ImageDraw.Draw(image)
    for i, (x, y, w, h) in enumerate(boxes):
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=((60 * i) % 255, 200, 40))
    image.save(path)


def write_coco(root: Path, box=(10, 10, 10, 10)) -> Path:
    """COCO val2017 layout: 3 images, categories 1 person, 3 bicycle, 7 car (ids with gaps), one box each."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "bicycle"}, {"id": 7, "name": "car"}]
    images, annotations = [], []
    for i in range(3):
        name = f"{i + 1:012d}.jpg"
        x, y, w, h = box[0] + 20 * i, box[1], box[2], box[3]
        _draw(root / "val2017" / name, boxes=[(x, y, w, h)])
        images.append({"id": 100 + i, "file_name": name, "width": 160, "height": 128})
        annotations.append({"id": i + 1, "image_id": 100 + i, "category_id": categories[i]["id"],
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_bench_coco_end_to_end(tiny_weights, tmp_path, capsys, monkeypatch):
    ann = write_coco(tmp_path / "coco")
    out = tmp_path / "out"
    args = ["bench", "coco", "--data-root", str(tmp_path), "--weights", str(tiny_weights), "--device", "cpu",
            "--output", str(out)]
    code, stdout, err = _cli(capsys, *args)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["images"] == 3 and result["predicted_now"] == 3 and result["paper"] == {}
    assert set(result["metrics"]) >= {"AP", "AP50", "APs"} and "COCO val2017" in stdout
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4  # header + 3 images
    rows = json.loads(lines[1])["value"]
    assert 0 < len(rows) <= 100 and all(r[0] in (1, 3, 7) and len(r) == 6 for r in rows)
    code, _, _ = _cli(capsys, *args)
    again = json.loads((out / "result.json").read_text())
    assert code == 0 and again["predicted_now"] == 0 and again["reused"] == 3 and again["metrics"] == result["metrics"]

    # the pipeline with perfect detections (10 x 10 boxes: one pixel off would cost AP)
    monkeypatch.setattr(split_eval, "detect_images", perfect_detector(_gt_boxes([ann], tmp_path / "coco" / "val2017")))
    code, _, err = _cli(capsys, *args[:-1], str(tmp_path / "perfect"), "--max-images", "2")
    perfect = json.loads((tmp_path / "perfect" / "result.json").read_text())
    assert code == 0 and perfect["metrics"]["AP"] == pytest.approx(1.0) and perfect["images"] == 2
    assert "only the first 2 of 3 images" in perfect["notes"][0]


def test_bench_coco_shifted_box_costs_the_expected_ap(tiny_weights, tmp_path, capsys, monkeypatch):
    """One of three 40 x 40 boxes moved 6 px: IoU 34/46 = 0.74, a hit at IoU 0.50-0.70 (5 of 10
    thresholds), so that category's AP is 0.5 and the mean (1 + 1 + 0.5) / 3."""
    from glipcli.bench import paper

    ann = write_coco(tmp_path / "coco", box=(5, 20, 40, 40))
    monkeypatch.setattr(split_eval, "detect_images", perfect_detector(_gt_boxes([ann], tmp_path / "coco" / "val2017"),
                                                                            shift={"bicycle": 6}))
    monkeypatch.setattr(BenchModel, "paper_model", property(lambda self: "glip-t"))  # as if official weights
    code, stdout, err = _cli(capsys, "bench", "coco", "--ann", str(ann), "--images", str(tmp_path / "coco" / "val2017"),
                             "--weights", str(tiny_weights), "--device", "cpu", "--output", str(tmp_path / "out"))
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["metrics"]["AP"] == pytest.approx(2.5 / 3) and result["metrics"]["AP50"] == pytest.approx(1.0)
    assert result["paper"]["AP"]["value"] == paper.coco_box_ap("glip-t").value and "paper" in stdout
    assert f"{paper.coco_box_ap('glip-t').value:.1f}" in (tmp_path / "out" / "result.md").read_text()


def test_bench_coco_missing_data(tmp_path, capsys):
    code, _, err = _cli(capsys, "bench", "coco", "--data-root", str(tmp_path), "--output", str(tmp_path / "o"))
    assert code == 2 and "COCO val2017 annotations not found" in err and "instances_val2017.json" in err


LVIS_NAMES = [f"thing_{i}" for i in range(42)] + ["bow_(weapon)", "tank_(storage_vessel)", "bow_(decorative_ribbon)"]


def write_lvis(root: Path, inserted: bool = True) -> Path:
    """LVIS v1 layout under root/coco: 45 categories (r/c/f), 3 images in val2017 with 10 x 10 boxes.
    inserted: the official minival file with `file_name`; else lvis_v1_val.json with `coco_url` only."""
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").mkdir()
    categories = [{"id": i + 1, "name": n, "frequency": "rcf"[i % 3], "synset": n} for i, n in enumerate(LVIS_NAMES)]
    images, annotations = [], []
    for i, cat in enumerate((43, 44, 2)):
        name = f"{i + 1:012d}.jpg"
        box = [12 + 30 * i, 30, 10, 10]
        _draw(coco / "val2017" / name, boxes=[box])
        entry = {"id": 10 + i, "width": 160, "height": 128, "neg_category_ids": [1, 45],
                 "not_exhaustive_category_ids": [], "coco_url": f"http://images.cocodataset.org/val2017/{name}"}
        if inserted:
            entry["file_name"] = f"val2017/{name}"
        images.append(entry)
        annotations.append({"id": i + 1, "image_id": 10 + i, "category_id": cat, "bbox": box, "area": 100.0})
    name = "lvis_v1_minival_inserted_image_name.json" if inserted else "lvis_v1_val.json"
    path = coco / "annotations" / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_bench_lvis_end_to_end(tiny_weights, tmp_path, capsys, monkeypatch):
    write_lvis(tmp_path)
    out = tmp_path / "out"
    args = ["bench", "lvis", "--data-root", str(tmp_path), "--weights", str(tiny_weights), "--device", "cpu",
            "--output", str(out), "-q"]
    code, _, err = _cli(capsys, *args)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["images"] == 3 and set(result["metrics"]) >= {"AP", "APr", "APc", "APf"}
    assert result["run"]["chunk_size"] == 40 and result["run"]["max_detections"] == 300

    # perfect detections through the official LVIS conventions: 2 chunks of <= 40 classes, 300 per image,
    # boxes w = x2 - x1 (no +1), categories in id order with cleaned names grounded
    ann = write_lvis(tmp_path / "val", inserted=False)
    seen: list = []
    boxes = {str((ann.parent.parent / "val2017" / f"{i + 1:012d}.jpg").resolve()): [(LVIS_NAMES[c - 1], [12 + 30 * i,
                                                                                                          30, 10, 10])]
             for i, c in enumerate((43, 44, 2))}
    monkeypatch.setattr(split_eval, "detect_images", perfect_detector(boxes, plus_one=False, seen=seen))
    code, _, err = _cli(capsys, "bench", "lvis", "--split", "val", "--data-root", str(tmp_path / "val"), "--weights",
                        str(tiny_weights), "--device", "cpu", "--output", str(tmp_path / "perfect"), "-q")
    assert code == 0, err
    metrics = json.loads((tmp_path / "perfect" / "result.json").read_text())["metrics"]
    assert metrics["AP"] == pytest.approx(1.0) and metrics["APr"] == pytest.approx(1.0)
    assert metrics["APc"] == pytest.approx(1.0) and metrics["APf"] == -1.0  # no frequent category has a box
    assert seen[0]["chunk_size"] == 40 and seen[0]["max_detections"] == 300
    spec = seen[0]["spec"]
    assert spec.names == LVIS_NAMES and spec.classes[42].grounded_text == "bow "  # official clean_name


def write_flickr(root: Path) -> dict:
    """Flickr30K Entities release + images: 2 val images, 3 sentences, 4 boxed phrases (one with two boxes)."""
    ent = root / "flickr30k_entities"
    (ent / "Sentences").mkdir(parents=True)
    (ent / "Annotations").mkdir()
    (root / "flickr30k-images").mkdir()
    (ent / "val.txt").write_text("1001\n1002\n")
    sentences = {
        "1001": ["[/EN#1/people A man] holds [/EN#2/other a red cup] .",
                 "[/EN#1/people Someone] drinks ."],
        "1002": ["[/EN#3/animals Two dogs] run on [/EN#4/scene the grass] ."],
    }
    objects = {"1001": [("1", (10, 10, 60, 90)), ("2", (70, 40, 100, 70))],
               "1002": [("3", (5, 5, 40, 40)), ("3", (60, 10, 100, 50))]}
    for image_id, lines in sentences.items():
        (ent / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")
        body = "".join(f"<object><name>{pid}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                       f"<ymax>{b[3]}</ymax></bndbox></object>" for pid, b in objects[image_id])
        body += "<object><name>4</name><nobndbox>0</nobndbox><scene>1</scene></object>"
        (ent / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{body}</annotation>")
        _draw(root / "flickr30k-images" / f"{image_id}.jpg", size=(160, 128))
    return objects


def test_bench_flickr30k_end_to_end(tiny_weights, tmp_path, capsys, monkeypatch):
    objects = write_flickr(tmp_path)
    args = ["bench", "flickr30k", "--data-root", str(tmp_path), "--weights", str(tiny_weights), "--device", "cpu"]
    code, stdout, err = _cli(capsys, *args, "--output", str(tmp_path / "out"))
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert set(result["metrics"]) == {"R@1", "R@5", "R@10", "upper bound"} and result["images"] == 2
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values()) and "R@10" in stdout
    assert "4 phrases in 3 sentences (any-box protocol)" in result["notes"][-1]
    stored = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[1])["value"]
    assert [len(s) for s in stored] == [2, 1] and all(1 <= len(phrase) <= 10 for s in stored for phrase in s)

    # perfect grounding gives recall 1; one phrase with a wrong first box: R@1 3/4, R@5 1
    def grounder(wrong_first: bool):
        def fake(predictor, path, sentences, top_k):
            assert top_k == 10
            out = []
            for s in sentences:
                boxes = []
                for p in s.phrases:
                    mine = [list(b) for pid, b in objects[s.image_id] if pid == p.phrase_id]
                    if wrong_first and p.text == "a red cup":
                        mine.insert(0, [120, 100, 150, 120])
                    boxes.append(mine[::-1] if p.phrase_id == "3" else mine)  # the second dog box first
                out.append(boxes)
            return out
        return fake

    monkeypatch.setattr(standard, "ground_image", grounder(False))
    assert _cli(capsys, *args, "--output", str(tmp_path / "perfect"), "-q")[0] == 0
    perfect = json.loads((tmp_path / "perfect" / "result.json").read_text())["metrics"]
    assert perfect == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "upper bound": 1.0}
    monkeypatch.setattr(standard, "ground_image", grounder(True))
    assert _cli(capsys, *args, "--output", str(tmp_path / "wrong"), "-q")[0] == 0
    wrong = json.loads((tmp_path / "wrong" / "result.json").read_text())["metrics"]
    assert wrong["R@1"] == pytest.approx(0.75) and wrong["R@5"] == 1.0
    code, _, err = _cli(capsys, "bench", "flickr30k", "--data-root", str(tmp_path), "--split", "test")
    assert code == 2 and "Flickr30K Entities test split not found" in err
