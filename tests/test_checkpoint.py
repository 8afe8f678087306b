"""Checkpoint reading and writing (golden README §1).

Official-layout checkpoints are fabricated from the real key inventories of GLIP-T, GLIP-T (A) and
GLIP-L (`glip_*_keys.json`): every entry gets a tensor of the recorded shape and dtype, stored as
a 1-element storage expanded to the full shape, so a 430M-parameter GLIP-L checkpoint is a few
hundred kB on disk. The anchor buffers hold the true cell anchors (what the official generator
stores and what our loader checks against the config). Models are built on the meta device.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import glipcli.checkpoint as checkpoint
from glipcli.checkpoint import (
    convert_official_state_dict,
    load_checkpoint,
    read_state_dict,
    save_safetensors,
)
from glipcli.config import get_preset
from glipcli.errors import GlipError
from glipcli.modeling.anchors import cell_anchor
from glipcli.modeling.glip import GLIP
from glipcli.checkpoint import config_from_metadata
from glipcli.predictor import GLIPPredictor
from golden_utils import golden_model, load

# Loading real tensors into meta parameters is a deliberate no-op here (only names/shapes matter).
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

VARIANTS = {"glip-t": "glip_t_keys.json", "glip-t-a": "glip_t_a_keys.json", "glip-l": "glip_l_keys.json"}
ANCHOR_SIZES = (64, 128, 256, 512, 1024)
ANCHOR_STRIDES = (8, 16, 32, 64, 128)
ANCHOR_PREFIX = "rpn.anchor_generator.cell_anchors."


# -- helpers --------------------------------------------------------------------------------------
def _inventory(golden_dir: Path, preset: str) -> dict:
    return json.loads((golden_dir / VARIANTS[preset]).read_text())


def _fake_tensor(entry: dict) -> torch.Tensor:
    model_key = entry["model_key"]
    if model_key.startswith(ANCHOR_PREFIX):
        level = int(model_key[len(ANCHOR_PREFIX):])
        anchor = cell_anchor(ANCHOR_SIZES[level], ANCHOR_STRIDES[level]).reshape(1, 4)
        assert list(anchor.shape) == entry["shape"]
        return anchor.to(getattr(torch, entry["dtype"]))
    return torch.zeros(1, dtype=getattr(torch, entry["dtype"])).expand(entry["shape"])


def _official_state(golden_dir: Path, preset: str, prefix: bool = True) -> dict[str, torch.Tensor]:
    key = "key" if prefix else "model_key"
    return {e[key]: _fake_tensor(e) for e in _inventory(golden_dir, preset)["entries"]}


def _save_official(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """The official trainer's layout: model state dict plus training state."""
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"last_epoch": 10}, "iteration": 10}, path)
    return path


def _meta_model(preset: str) -> GLIP:
    with torch.device("meta"):
        return GLIP(get_preset(preset))


def _assert_one_line_error(excinfo, path: Path) -> str:
    message = str(excinfo.value)
    assert str(path) in message
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def official_files(golden_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("official")
    return {name: _save_official(root / f"{name}.pth", _official_state(golden_dir, name)) for name in VARIANTS}


# -- 1. key coverage of the real checkpoint layouts ----------------------------------------------
@pytest.mark.parametrize("preset", list(VARIANTS))
def test_fabricated_checkpoint_is_small_and_complete(golden_dir, official_files, preset):
    inventory = _inventory(golden_dir, preset)
    path = official_files[preset]
    assert path.stat().st_size < 2_000_000  # expanded 1-element storages, not 1 GB of zeros
    obj = torch.load(path, weights_only=True)
    assert set(obj["model"]) == {e["key"] for e in inventory["entries"]}
    for entry in inventory["entries"]:
        assert list(obj["model"][entry["key"]].shape) == entry["shape"], entry["key"]


@pytest.mark.parametrize("preset", list(VARIANTS))
def test_official_checkpoint_loads_without_missing_or_unexpected(golden_dir, official_files, preset):
    model = _meta_model(preset)
    result = load_checkpoint(model, official_files[preset])
    assert result == {"missing": [], "unexpected": []}


@pytest.mark.parametrize("preset", list(VARIANTS))
def test_every_parameter_is_covered_by_a_checkpoint_key(golden_dir, preset):
    inventory = _inventory(golden_dir, preset)
    state = _official_state(golden_dir, preset, prefix=False)
    mapped, unmapped = convert_official_state_dict(state, get_preset(preset))
    model = _meta_model(preset)
    params = dict(model.named_parameters())

    official_params = [e for e in inventory["entries"] if e["kind"] == "parameter"]
    assert len(params) == len(official_params)
    assert sum(p.numel() for p in params.values()) == inventory["num_parameter_elements"]
    assert set(params) <= set(mapped), sorted(set(params) - set(mapped))[:5]
    for name, param in params.items():
        assert tuple(mapped[name].shape) == tuple(param.shape), name
    # Every official parameter maps onto one of ours (no parameter is silently dropped).
    official_to_ours = {e["model_key"] for e in official_params}
    assert not (official_to_ours & set(unmapped))
    # The mapping is one-to-one: no two official keys land on the same name of ours.
    anchors = [k for k in state if k.startswith(ANCHOR_PREFIX)]
    assert len(anchors) == 5
    assert len(mapped) == len(state) - len(anchors) - len(unmapped)
    assert unmapped == []


def test_tiny_pth_loads_values_into_the_right_parameters(golden_dir, tmp_path):
    """Values, not only names: the golden tiny weights written as an official DDP `.pth` load
    bitwise onto the same parameters as the reference loading from safetensors."""
    reference = golden_model(str(golden_dir / "tiny"))
    weights = load(str(golden_dir / "tiny" / "weights.safetensors"))
    path = _save_official(tmp_path / "tiny.pth", {"module." + k: v for k, v in weights.items()})
    torch.manual_seed(123)
    model = GLIP(reference.cfg)
    assert load_checkpoint(model, path) == {"missing": [], "unexpected": []}
    ours, ref = model.state_dict(), reference.state_dict()
    assert set(ours) == set(ref)
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key


def test_checkpoint_without_module_prefix_loads(golden_dir, tmp_path):
    state = _official_state(golden_dir, "glip-t", prefix=False)
    assert not any(k.startswith("module.") for k in state)
    path = _save_official(tmp_path / "plain.pth", state)
    assert load_checkpoint(_meta_model("glip-t"), path) == {"missing": [], "unexpected": []}


def test_bare_state_dict_without_model_entry_loads(golden_dir, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(_official_state(golden_dir, "glip-t"), path)
    assert load_checkpoint(_meta_model("glip-t"), path) == {"missing": [], "unexpected": []}


def test_glip_l_checkpoint_into_glip_t_reports_shape_mismatch(official_files):
    with pytest.raises(GlipError) as excinfo:
        load_checkpoint(_meta_model("glip-t"), official_files["glip-l"])
    message = _assert_one_line_error(excinfo, official_files["glip-l"])
    assert "shape mismatch" in message
    assert "glip-t" in message
    # Swin-L patch embedding has 192 channels, Swin-T 96.
    assert "(192, 3, 4, 4)" in message and "(96, 3, 4, 4)" in message


def test_glip_t_a_checkpoint_into_glip_t_lists_missing_keys(official_files):
    with pytest.raises(GlipError) as excinfo:
        load_checkpoint(_meta_model("glip-t"), official_files["glip-t-a"])
    message = _assert_one_line_error(excinfo, official_files["glip-t-a"])
    assert "missing" in message
    # GLIP-T (A) has no X-MHA fusion: the deep-fusion parameters of layer 0 are missing.
    assert "head.layers.0.fusion." in message
    result = load_checkpoint(_meta_model("glip-t"), official_files["glip-t-a"], strict=False)
    assert result["missing"] and all("head.layers." in k for k in result["missing"])
    assert any(".fusion." in k for k in result["missing"]) and any(".text_layer." in k for k in result["missing"])


def test_unknown_key_is_reported_as_unexpected(golden_dir, tmp_path):
    state = _official_state(golden_dir, "glip-t")
    state["module.rpn.head.extra_branch.weight"] = torch.zeros(3)
    path = _save_official(tmp_path / "extra.pth", state)
    with pytest.raises(GlipError) as excinfo:
        load_checkpoint(_meta_model("glip-t"), path)
    message = _assert_one_line_error(excinfo, path)
    assert "unexpected" in message and "rpn.head.extra_branch.weight" in message
    assert "missing" not in message
    result = load_checkpoint(_meta_model("glip-t"), path, strict=False)
    assert result == {"missing": [], "unexpected": ["rpn.head.extra_branch.weight"]}


def test_missing_key_is_reported_by_name(golden_dir, tmp_path):
    state = _official_state(golden_dir, "glip-t")
    del state["module.rpn.head.bbox_pred.weight"]
    path = _save_official(tmp_path / "missing.pth", state)
    with pytest.raises(GlipError) as excinfo:
        load_checkpoint(_meta_model("glip-t"), path)
    message = _assert_one_line_error(excinfo, path)
    assert "missing" in message and "head.bbox_pred.weight" in message
    assert "unexpected" not in message
    result = load_checkpoint(_meta_model("glip-t"), path, strict=False)
    assert result == {"missing": ["head.bbox_pred.weight"], "unexpected": []}


def test_wrong_anchor_value_is_refused(golden_dir, tmp_path):
    state = _official_state(golden_dir, "glip-t")
    state["module.rpn.anchor_generator.cell_anchors.2"] = cell_anchor(200, 32).reshape(1, 4)
    path = _save_official(tmp_path / "anchors.pth", state)
    with pytest.raises(GlipError) as excinfo:
        load_checkpoint(_meta_model("glip-t"), path)
    message = str(excinfo.value)
    assert "anchors" in message and "level 2" in message
    assert "\n" not in message


# -- 2. files that are not GLIP checkpoints ------------------------------------------------------
def _expect_file_error(path: Path) -> str:
    with pytest.raises(GlipError) as excinfo:
        load_checkpoint(_meta_model("glip-t"), path)
    return _assert_one_line_error(excinfo, path)


def test_pth_with_foreign_keys(tmp_path):
    path = tmp_path / "foo.pth"
    torch.save({"foo": torch.ones(3)}, path)
    assert "not a GLIP checkpoint" in _expect_file_error(path)


def test_truncated_pth(golden_dir, tmp_path):
    full = _save_official(tmp_path / "full.pth", _official_state(golden_dir, "glip-t-a"))
    data = full.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    _expect_file_error(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    assert "empty" in _expect_file_error(path)


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "model.pth"
    assert "no such" in _expect_file_error(path)


class _RunsCode:
    """A pickle payload that runs a shell command when unpickled by a full unpickler."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    payload = {"model": {"backbone.body.patch_embed.proj.weight": _RunsCode(marker)}}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    message = _expect_file_error(path)
    assert not marker.exists()
    # torch's advice to retry with weights_only=False must not reach the user.
    assert "weights_only" not in message


def test_random_bytes_safetensors(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(random.Random(0).randbytes(4096))
    assert "safetensors" in _expect_file_error(path)


# -- 3. our safetensors files --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(golden_dir):
    return golden_model(str(golden_dir / "tiny"))


def _token_logits(model: GLIP, golden_dir: Path) -> list[torch.Tensor]:
    inputs = load(str(golden_dir / "tiny" / "inputs.safetensors"))
    with torch.inference_mode():
        text = model.encode_text(inputs["det/input_ids"], inputs["det/attention_mask"])
        return model(inputs["image_tensor"], text).head.token_logits


def test_safetensors_metadata_carries_format_and_config(tiny_model, tmp_path):
    path = save_safetensors(tiny_model, tmp_path / "tiny.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        keys = set(f.keys())
    assert metadata["format"] == "glipcli"
    assert json.loads(metadata["config"])["swin"]["embed_dim"] == tiny_model.cfg.swin.embed_dim
    assert config_from_metadata(metadata) == tiny_model.cfg
    assert keys <= set(tiny_model.state_dict())
    assert {name for name, _ in tiny_model.named_parameters()} <= keys


def test_safetensors_roundtrip_rebuilds_config_and_gives_identical_logits(tiny_model, golden_dir, tmp_path):
    path = save_safetensors(tiny_model, tmp_path / "tiny.safetensors")
    torch.manual_seed(7)  # a different random init, all overwritten by the weights
    predictor = GLIPPredictor.from_pretrained(weights=path)
    assert predictor.cfg == tiny_model.cfg
    expected = _token_logits(tiny_model, golden_dir)
    got = _token_logits(predictor.model, golden_dir)
    assert len(got) == len(expected) == 5
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_float16_save_halves_size_and_loads(tiny_model, tmp_path):
    full = save_safetensors(tiny_model, tmp_path / "fp32.safetensors")
    half = save_safetensors(tiny_model, tmp_path / "fp16.safetensors", dtype=torch.float16)
    ratio = half.stat().st_size / full.stat().st_size
    assert 0.45 < ratio < 0.55, ratio
    state, _ = read_state_dict(half)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    predictor = GLIPPredictor.from_pretrained(weights=half)
    assert predictor.cfg == tiny_model.cfg
    loaded = dict(predictor.model.named_parameters())
    for name, param in tiny_model.named_parameters():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], param.detach().half().float()), name


def test_save_leaves_no_temporary_files(tiny_model, tmp_path):
    folder = tmp_path / "out"
    save_safetensors(tiny_model, folder / "model.safetensors")
    save_safetensors(tiny_model, folder / "model.safetensors")  # overwrite in place
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]


def test_failed_save_keeps_existing_file(tiny_model, tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous contents")

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")  # a half-written file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    monkeypatch.setattr(checkpoint, "save_file", failing_save_file, raising=False)
    with pytest.raises(GlipError, match="model.safetensors: cannot write the file \\(disk full\\)"):
        save_safetensors(tiny_model, target)
    assert target.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_config_dict_round_trip_and_refusal():
    from glipcli.config import PRESETS, GLIPConfig
    from glipcli.errors import GlipError

    for cfg in PRESETS.values():
        data = cfg.to_dict()
        assert json.loads(json.dumps(data)) == data  # plain JSON values: tuples stored as lists
        assert GLIPConfig.from_dict(data) == cfg
        assert isinstance(GLIPConfig.from_dict(data).swin.depths, tuple)
    with pytest.raises(GlipError, match="not a GLIP model config"):
        GLIPConfig.from_dict({"name": "x", "swin": {"depths": [2]}})
