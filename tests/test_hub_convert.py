"""Weights: presets resolved through a (fake, offline) Hugging Face cache, checkpoint paths given
to --model, architecture recognition, and `glip convert` to slim safetensors files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from glipcli.cli.main import main
from glipcli.config import PRESETS
from glipcli.errors import GlipError
from glipcli.hub import HUB_CHECKPOINTS, HUB_REPO, HUB_REVISION, download_weights
from glipcli.predictor import GLIPPredictor
from glipcli.weights import infer_config, resolve_model_source
from golden_utils import fabricate_official_checkpoint, golden_model, load

CLASSES = "person. bicycle. car. dog"
COMMIT = HUB_REVISION  # downloads are pinned to this commit of HUB_REPO


@pytest.fixture(scope="module")
def official_tiny(golden_dir, tmp_path_factory) -> Path:
    """The golden tiny weights in the official on-disk layout (DDP `module.` prefix, "model")."""
    weights = load_file(str(golden_dir / "tiny" / "weights.safetensors"))
    path = tmp_path_factory.mktemp("official") / "tiny_official.pth"
    torch.save({"model": {"module." + k: v for k, v in weights.items()}, "iteration": 1}, path)
    return path


def _fake_hub_cache(root: Path, filename: str, payload: Path) -> Path:
    """A Hugging Face hub cache holding `payload` as `filename` of HUB_REPO at revision main."""
    repo = root / ("models--" + HUB_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(payload.read_bytes())
    return root


def _offline_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HOME=str(cache.parent / "hf_home"))
    return env


def _golden_detections(golden_dir: Path) -> torch.Tensor:
    ref = load(str(golden_dir / "tiny" / "outputs_det.safetensors"))
    return ref["final_scores"].sort(descending=True).values


# -- the hub -------------------------------------------------------------------------------------
def test_every_preset_names_an_official_checkpoint():
    # nano is ours (trained here, not an official checkpoint on the hub).
    assert set(HUB_CHECKPOINTS) == set(PRESETS) - {"nano"}
    assert {c.filename for c in HUB_CHECKPOINTS.values()} == {
        "glip_a_tiny_o365.pth", "glip_tiny_model_o365.pth", "glip_tiny_model_o365_goldg.pth",
        "glip_tiny_model_o365_goldg_cc_sbu.pth", "glip_large_model.pth"}
    assert HUB_CHECKPOINTS["glip-t-a"].url == (f"https://huggingface.co/{HUB_REPO}/resolve/{HUB_REVISION}/"
                                               "glip_a_tiny_o365.pth")


def test_preset_resolves_from_the_hub_cache(official_tiny, tmp_path, monkeypatch, golden_dir):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = _fake_hub_cache(tmp_path / "hub", "glip_tiny_model_o365_goldg.pth", official_tiny)
    path = download_weights("glip-t-c", cache_dir=cache)
    assert path.is_file() and path.name == "glip_tiny_model_o365_goldg.pth" and cache in path.parents
    # A preset with --config: the config gives the architecture, the preset the weights.
    predictor = GLIPPredictor.from_pretrained("glip-t-c", config=golden_dir / "tiny" / "config.yaml",
                                              cache_dir=cache)
    (result,) = predictor.predict(golden_dir / "tiny" / "image.png", CLASSES)
    assert torch.allclose(torch.tensor([d.score for d in result.detections]), _golden_detections(golden_dir),
                          atol=1e-5)


def test_detect_with_a_preset_from_the_offline_cache(official_tiny, tmp_path, golden_dir):
    cache = _fake_hub_cache(tmp_path / "hub", "glip_tiny_model_o365_goldg.pth", official_tiny)
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "glipcli.cli.main", "detect", str(golden_dir / "tiny" / "image.png"),
         "--model", "glip-t-c", "--config", str(golden_dir / "tiny" / "config.yaml"), "-p", CLASSES,
         "--box-threshold", "0", "--json", str(out), "-q"],
        capture_output=True, text=True, timeout=300, env=_offline_env(cache))
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(out.read_text())
    scores = torch.tensor([d["score"] for d in result["detections"]])
    assert torch.allclose(scores, _golden_detections(golden_dir), atol=1e-5)


def test_offline_without_the_file_says_how_to_pass_a_local_one(tmp_path, golden_dir, monkeypatch, capsys):
    from huggingface_hub import constants

    empty = tmp_path / "hub"
    empty.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(empty))  # what HF_HUB_CACHE sets
    code = main(["detect", str(golden_dir / "tiny" / "image.png"), "--model", "glip-t", "-p", "dog"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in ("glip_tiny_model_o365_goldg_cc_sbu.pth", "not in the local Hugging Face cache",
                   "HF_HUB_OFFLINE", "--weights PATH"):
        assert needle in err, err


def test_model_source_precedence(official_tiny, tmp_path):
    assert resolve_model_source(model=str(official_tiny)).weights == official_tiny
    assert resolve_model_source(model=str(official_tiny)).config is None  # read from the checkpoint
    source = resolve_model_source(model="glip-t-a", weights=official_tiny)
    assert (source.config.name, source.weights) == ("glip-t-a", official_tiny)
    with pytest.raises(GlipError, match="give one of them"):
        resolve_model_source(model=str(official_tiny), weights=official_tiny)
    with pytest.raises(GlipError, match="unknown model preset 'glip-xl'"):
        resolve_model_source(model="glip-xl")
    with pytest.raises(GlipError, match="no such checkpoint file"):
        resolve_model_source(model=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("keys, preset", [("glip_t_keys.json", "glip-t"), ("glip_t_a_keys.json", "glip-t-a"),
                                          ("glip_l_keys.json", "glip-l")])
def test_architecture_is_recognised_from_an_official_checkpoint(golden_dir, tmp_path, keys, preset):
    from glipcli.checkpoint import read_state_dict

    path = fabricate_official_checkpoint(golden_dir / keys, tmp_path / "ckpt.pth")
    state, metadata = read_state_dict(path)
    assert infer_config(state, metadata) == PRESETS[preset]


def test_reduced_architecture_needs_a_config(official_tiny):
    from glipcli.checkpoint import read_state_dict

    state, metadata = read_state_dict(official_tiny)
    with pytest.raises(GlipError, match="is not a preset; pass --config"):
        infer_config(state, metadata)


# -- glip convert ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(official_tiny, golden_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "tiny.safetensors"
    code = main(["convert", str(official_tiny), str(out), "--config", str(golden_dir / "tiny" / "config.yaml")])
    assert code == 0
    return out


def test_convert_prints_the_size_ratio(official_tiny, golden_dir, tmp_path, capsys):
    out = tmp_path / "tiny16.safetensors"
    code = main(["convert", str(official_tiny), str(out), "--config", str(golden_dir / "tiny" / "config.yaml"),
                 "--dtype", "float16"])
    assert code == 0
    printed = capsys.readouterr().out
    ratio = out.stat().st_size / official_tiny.stat().st_size
    assert f"{ratio:.1%} of tiny_official.pth" in printed
    assert 0.4 < ratio < 0.6
    with safe_open(str(out), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys() if f.get_tensor(k).is_floating_point())


def test_converted_file_is_slim_safe_and_self_describing(converted, official_tiny, golden_dir):
    with safe_open(str(converted), framework="pt") as f:
        metadata = f.metadata()
        keys = set(f.keys())
    assert metadata["format"] == "glipcli" and metadata["converted_from"] == "tiny_official.pth"
    model = golden_model(str(golden_dir / "tiny"))
    assert {name for name, _ in model.named_parameters()} <= keys <= set(model.state_dict())
    state = load_file(str(converted))
    for name, value in model.state_dict().items():
        if name in state:
            assert torch.equal(state[name], value), name


def test_converted_file_gives_identical_detections(converted, golden_dir):
    image = golden_dir / "tiny" / "image.png"
    reference = GLIPPredictor(golden_model(str(golden_dir / "tiny"))).predict(image, CLASSES)[0]
    loaded = GLIPPredictor.from_pretrained(weights=converted)  # architecture from the metadata
    result = loaded.predict(image, CLASSES)[0]
    assert result.to_dict() == reference.to_dict()


def test_model_path_runs_the_converted_file(converted, golden_dir, tmp_path):
    out = tmp_path / "out.json"
    code = main(["detect", str(golden_dir / "tiny" / "image.png"), "--model", str(converted), "-p", CLASSES,
                 "--box-threshold", "0", "--json", str(out), "-q", "--device", "cpu"])
    assert code == 0
    (result,) = json.loads(out.read_text())
    scores = torch.tensor([d["score"] for d in result["detections"]])
    assert torch.allclose(scores, _golden_detections(golden_dir), atol=1e-5)


def test_convert_refuses_to_overwrite(converted, official_tiny, golden_dir, capsys):
    before = converted.read_bytes()
    code = main(["convert", str(official_tiny), str(converted), "--config", str(golden_dir / "tiny" / "config.yaml")])
    assert code == 2 and "already exists (pass --overwrite" in capsys.readouterr().err
    assert converted.read_bytes() == before


@pytest.mark.parametrize("target, extra, needle", [
    ("out.pth", [], "must be a .safetensors file"),
    ("out.safetensors", [], "is not a preset; pass --config"),
    ("out.safetensors", ["--model", "glip-t"], "does not fit the 'glip-t' architecture"),
])
def test_convert_errors(official_tiny, tmp_path, capsys, target, extra, needle):
    code = main(["convert", str(official_tiny), str(tmp_path / target), *extra])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / target).exists()
