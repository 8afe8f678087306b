"""`glip detect` end to end: golden detections through the CLI, JSON schema, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glipcli.cli.main import main
from golden_utils import load


def _glip(*args: str) -> subprocess.CompletedProcess:
    """Run the installed console entry point in a fresh process (as a user would)."""
    return subprocess.run([sys.executable, "-m", "glipcli.cli.main", *args],
                          capture_output=True, text=True, timeout=300)


def _golden_args(golden_dir: Path) -> list[str]:
    tiny = golden_dir / "tiny"
    return ["--config", str(tiny / "config.yaml"), "--weights", str(tiny / "weights.safetensors")]


@pytest.mark.smoke
def test_detect_reproduces_golden_det(golden_dir, tmp_path):
    out = tmp_path / "out.json"
    code = main(["detect", str(golden_dir / "tiny" / "image.png"), *_golden_args(golden_dir),
                 "-p", "person. bicycle. car. dog", "--box-threshold", "0", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) == 1
    result = data[0]
    assert set(result) == {"image", "width", "height", "caption", "detections"}
    assert (result["width"], result["height"]) == (600, 400)
    assert result["caption"] == "person. bicycle. car. dog"
    dets = result["detections"]
    assert all(set(d) == {"box_xyxy", "score", "label", "phrase_index"} for d in dets)
    scores = [d["score"] for d in dets]
    assert scores == sorted(scores, reverse=True)

    ref = load(str(golden_dir / "tiny" / "outputs_det.safetensors"))
    assert len(dets) == len(ref["final_scores"])
    ref_order = torch.argsort(ref["final_scores"], descending=True, stable=True)
    assert torch.allclose(torch.tensor(scores), ref["final_scores"][ref_order], atol=1e-5)
    names = ["person", "bicycle", "car", "dog"]
    ref_boxes, ref_labels = ref["final_boxes_original"], ref["final_labels"]
    for d in dets:
        assert d["label"] == names[d["phrase_index"]]
        same_label = ref_labels == d["phrase_index"] + 1
        dist = (ref_boxes[same_label] - torch.tensor(d["box_xyxy"])).abs().amax(dim=1)
        assert dist.min() < 1e-3


def test_json_is_not_overwritten_without_flag(golden_dir, tmp_path, capsys):
    out = tmp_path / "out.json"
    out.write_text("precious")
    code = main(["detect", str(golden_dir / "tiny" / "image.png"), *_golden_args(golden_dir),
                 "-p", "dog", "--json", str(out)])
    assert code == 2
    assert out.read_text() == "precious"
    assert "already exists" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "garbage.jpg").write_bytes(b"this is not a jpeg at all")
    torch.save({"foo": torch.zeros(3)}, root / "not_glip.pth")
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 40, 200)).save(root / "ok.png")
    return root


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in err, err


def test_missing_image(bad_inputs, golden_dir):
    proc = _glip("detect", str(bad_inputs / "nope.jpg"), *_golden_args(golden_dir), "-p", "dog")
    _assert_one_line_error(proc, "nope.jpg", "no such")


def test_unreadable_image(bad_inputs, golden_dir):
    proc = _glip("detect", str(bad_inputs / "garbage.jpg"), *_golden_args(golden_dir), "-p", "dog")
    _assert_one_line_error(proc, "garbage.jpg", "not a readable image")


def test_empty_prompt(bad_inputs, golden_dir):
    proc = _glip("detect", str(bad_inputs / "ok.png"), *_golden_args(golden_dir), "-p", " . ")
    _assert_one_line_error(proc, "empty prompt")


def test_checkpoint_that_is_not_glip(bad_inputs):
    proc = _glip("detect", str(bad_inputs / "ok.png"), "--model", "glip-t",
                 "--weights", str(bad_inputs / "not_glip.pth"), "-p", "dog")
    _assert_one_line_error(proc, "not_glip.pth", "not a GLIP checkpoint")


def test_unknown_preset(bad_inputs):
    proc = _glip("detect", str(bad_inputs / "ok.png"), "--model", "glip-xl",
                 "--weights", str(bad_inputs / "not_glip.pth"), "-p", "dog")
    _assert_one_line_error(proc, "glip-xl", "glip-t")


def test_detect_with_full_size_glip_t_checkpoint(golden_dir, tmp_path):
    """A checkpoint with the official GLIP-T layout (every key, real shapes) runs end to end."""
    from PIL import Image

    from golden_utils import fabricate_official_checkpoint

    ckpt = fabricate_official_checkpoint(golden_dir / "glip_t_keys.json", tmp_path / "glip_t.pth", fill=0.01)
    image = tmp_path / "small.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(image)
    out = tmp_path / "out.json"
    code = main(["detect", str(image), "--model", "glip-t", "--weights", str(ckpt),
                 "-p", "person. dog", "--box-threshold", "0", "--json", str(out)])
    assert code == 0
    (result,) = json.loads(out.read_text())
    assert (result["width"], result["height"]) == (64, 48)
    assert result["detections"], "constant weights still score every location above 0.05"
    for det in result["detections"]:
        x0, y0, x1, y1 = det["box_xyxy"]
        assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 48
        assert det["label"] in ("person", "dog")


def test_unknown_option_is_a_usage_error_not_a_traceback(bad_inputs):
    proc = _glip("detect", str(bad_inputs / "ok.png"), "-p", "dog", "--no-such-option")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "No such option" in proc.stderr
