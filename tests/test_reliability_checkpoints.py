"""Bad-input matrix, checkpoints: truncated files, another architecture, a pickle that would run
code, mis-shaped parameters — through `glip detect` / `glip convert`, each one line that names the
file and says what was expected.

Rows already covered at the reader level (tests/test_checkpoint.py): a truncated official .pth,
an empty file, random bytes as safetensors, foreign keys, an evil pickle (torch.save and raw
pickle), GLIP-L / GLIP-T (A) checkpoints into GLIP-T, a missing or unexpected key, a wrong anchor.
Damaged training checkpoints on `--resume` are in tests/test_reliability_runs.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from glipcli.checkpoint import save_safetensors
from glipcli.modeling.glip import GLIP
from golden_utils import fabricate_official_checkpoint
from reliability_utils import assert_one_line_error, glip
from training_utils import tiny_config


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("ckpt") / "photo.png"
    Image.new("RGB", (48, 32), (90, 140, 60)).save(path)
    return path


@pytest.fixture(scope="module")
def files(golden_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    golden = (golden_dir / "tiny" / "weights.safetensors").read_bytes()
    out = {"golden": golden_dir / "tiny" / "weights.safetensors"}
    out["truncated.safetensors"] = root / "truncated.safetensors"
    out["truncated.safetensors"].write_bytes(golden[: len(golden) // 2])
    out["cut_in_header.safetensors"] = root / "cut_in_header.safetensors"
    out["cut_in_header.safetensors"].write_bytes(golden[:100])
    official = fabricate_official_checkpoint(golden_dir / "glip_t_a_keys.json", root / "glip_t_a.pth")
    out["glip_t_a.pth"] = official
    out["truncated.pth"] = root / "truncated.pth"
    out["truncated.pth"].write_bytes(official.read_bytes()[: official.stat().st_size // 2])
    torch.manual_seed(0)
    # the golden architecture with 1 head layer instead of its own count (same widths)
    out["one_head_layer.safetensors"] = save_safetensors(GLIP(tiny_config(golden_dir, head_layers=1)),
                                                         root / "one_head_layer.safetensors")
    # the golden architecture with a narrower fusion layer (same layer count)
    out["narrow_fusion.safetensors"] = save_safetensors(
        GLIP(tiny_config(golden_dir, head_layers=2, fusion_dim=256)), root / "narrow_fusion.safetensors")
    return out


def _config(golden_dir: Path) -> list[str]:
    return ["--config", str(golden_dir / "tiny" / "config.yaml")]


@pytest.mark.parametrize("name, needles", [
    ("truncated.safetensors", ["not a readable safetensors file", "truncated or damaged"]),
    ("cut_in_header.safetensors", ["not a readable safetensors file", "truncated or damaged"]),
    ("truncated.pth", ["not a readable checkpoint", "truncated or damaged", "central directory"]),
])
def test_truncated_checkpoint(golden_dir, image, files, capsys, name, needles):
    code, _, err = glip(capsys, "detect", image, *_config(golden_dir), "--weights", files[name], "-p", "dog")
    line = assert_one_line_error(code, err, str(files[name]), *needles)
    assert "If you are seeing this error" not in line  # torch's advice is cut, its reason kept


def test_truncated_checkpoint_given_alone(files, image, capsys):
    """Without a config the architecture is read from the file itself: same clear line."""
    code, _, err = glip(capsys, "detect", image, "--weights", files["truncated.safetensors"], "-p", "dog")
    assert_one_line_error(code, err, str(files["truncated.safetensors"]), "truncated or damaged")


def test_other_architecture_names_the_missing_parameters(golden_dir, image, files, capsys):
    code, _, err = glip(capsys, "detect", image, *_config(golden_dir), "--weights",
                        files["one_head_layer.safetensors"], "-p", "dog")
    line = assert_one_line_error(code, err, str(files["one_head_layer.safetensors"]),
                                 "does not match the 'config' architecture", "missing head.layers.1.")
    assert "in all)" in line  # the count of missing parameters, not a wall of names


def test_mismatched_shapes_say_what_the_model_expects(golden_dir, image, files, capsys):
    code, _, err = glip(capsys, "detect", image, *_config(golden_dir), "--weights",
                        files["narrow_fusion.safetensors"], "-p", "dog")
    line = assert_one_line_error(code, err, str(files["narrow_fusion.safetensors"]), "shape mismatch for head.layers.")
    assert "(checkpoint (256," in line and "model (2048," in line


def test_official_checkpoint_of_another_preset(files, image, capsys):
    """A GLIP-T (A) checkpoint (no deep fusion) with --model glip-t: its missing fusion layers are
    named; nothing is downloaded (the weights are given)."""
    code, _, err = glip(capsys, "detect", image, "--model", "glip-t", "--weights", files["glip_t_a.pth"], "-p", "dog")
    assert_one_line_error(code, err, str(files["glip_t_a.pth"]), "does not match the 'glip-t' architecture",
                          "missing head.layers.0.fusion.")


def test_golden_weights_into_a_full_size_preset(files, image, capsys):
    code, _, err = glip(capsys, "detect", image, "--model", "glip-t-a", "--weights", files["golden"], "-p", "dog")
    assert_one_line_error(code, err, "does not fit the 'glip-t-a' architecture",
                          "backbone.swin.layers.0.blocks.0.attn.proj.bias (checkpoint (32,), model (96,))")


class _RunsCode:
    """Unpickling this with a full unpickler runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def _evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"backbone.body.patch_embed.proj.weight": _RunsCode(marker)}}, evil)
    return evil, marker


def test_pickle_that_would_run_code_is_refused(golden_dir, image, tmp_path, capsys):
    evil, marker = _evil(tmp_path)
    code, _, err = glip(capsys, "detect", image, "--weights", evil, *_config(golden_dir), "-p", "dog")
    line = assert_one_line_error(code, err, str(evil), "refused to load", "only tensors and basic containers are read")
    assert "weights_only=False" not in line
    assert not marker.exists()


def test_convert_refuses_a_pickle_that_would_run_code(golden_dir, tmp_path, capsys):
    evil, marker = _evil(tmp_path)
    target = tmp_path / "out.safetensors"
    code, _, err = glip(capsys, "convert", evil, target, *_config(golden_dir))
    assert_one_line_error(code, err, str(evil), "refused to load")
    assert not marker.exists() and not target.exists()
