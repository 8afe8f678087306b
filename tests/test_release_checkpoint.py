"""Released GLIP files (`glip_tiny_model_o365_goldg_cc_sbu.pth` and the others) are training
checkpoints: `model` and `model_ema`, the optimizer's Adam moments, scheduler and iteration, and
keys the model has no use for (BERT's pooler, the MLM head). These tests build a reduced file with
exactly that structure from the golden tiny weights."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from glipcli.checkpoint import load_checkpoint, read_state_dict, release_extra_kind
from glipcli.errors import GlipError
from glipcli.modeling.glip import GLIP
from glipcli.weights import ModelSource, load_model
from glipcli.yacs_config import config_from_yacs
from golden_utils import load

pytestmark = pytest.mark.smoke

HIDDEN = 64  # tiny/bert_config.json
VOCAB = 30522


def _extras() -> dict[str, torch.Tensor]:
    """The extra keys of the kinds released files carry (official names, without `module.`)."""
    g = torch.Generator().manual_seed(5)
    pooler = "language_backbone.body.model.pooler.dense."
    mlm = "rpn.head.mlm_head.predictions."
    return {
        pooler + "weight": torch.randn(HIDDEN, HIDDEN, generator=g),
        pooler + "bias": torch.randn(HIDDEN, generator=g),
        mlm + "bias": torch.randn(VOCAB, generator=g),
        mlm + "transform.dense.weight": torch.randn(HIDDEN, HIDDEN, generator=g),
        mlm + "transform.dense.bias": torch.randn(HIDDEN, generator=g),
        mlm + "transform.LayerNorm.weight": torch.ones(HIDDEN),
        mlm + "transform.LayerNorm.bias": torch.zeros(HIDDEN),
        mlm + "decoder.weight": torch.randn(VOCAB, HIDDEN, generator=g),
    }


def release_checkpoint(weights: dict[str, torch.Tensor], path: Path, extras: bool = True,
                       moments: int = 1) -> Path:
    """A file laid out as the official trainer saves it: DDP-prefixed `model` and `model_ema`
    (a different state: EMA weights), then the optimizer (`moments` pairs of Adam moments per
    parameter), scheduler and iteration."""
    model = {"module." + k: v for k, v in weights.items()}
    if extras:
        model.update({"module." + k: v for k, v in _extras().items()})
    ema = {k: (v + 1.0 if v.is_floating_point() else v.clone()) for k, v in model.items()}
    params = [k for k, v in model.items() if v.is_floating_point()]
    state = {}
    for i, key in enumerate(params):
        entry: dict[str, torch.Tensor] = {"step": torch.tensor(90000.0)}
        for m in range(moments):
            entry[f"exp_avg{m or ''}"] = torch.full_like(model[key], 1e-3)
            entry[f"exp_avg_sq{m or ''}"] = torch.full_like(model[key], 1e-6)
        state[i] = entry
    optimizer = {"state": state, "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": list(range(len(params)))}]}
    torch.save({"model": model, "model_ema": ema, "optimizer": optimizer,
                "scheduler": {"last_epoch": 90000, "milestones": {67500: 1, 80000: 1}}, "iteration": 90000}, path)
    return path


@pytest.fixture(scope="module")
def tiny_weights(golden_dir) -> dict[str, torch.Tensor]:
    return load(str(golden_dir / "tiny" / "weights.safetensors"))


@pytest.fixture(scope="module")
def tiny_cfg(golden_dir):
    return config_from_yacs(golden_dir / "tiny" / "config.yaml")


@pytest.fixture(scope="module")
def release(tiny_weights, tmp_path_factory) -> Path:
    return release_checkpoint(tiny_weights, tmp_path_factory.mktemp("release") / "glip_tiny_release.pth")


def _assert_holds_model_entry(model: GLIP, reference: GLIP) -> None:
    ours, ref = model.state_dict(), reference.state_dict()
    assert set(ours) == set(ref)
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key


@pytest.fixture(scope="module")
def reference(golden_dir):
    from golden_utils import golden_model

    return golden_model(str(golden_dir / "tiny"))


def test_extra_kinds_are_recognised_and_nothing_else():
    assert release_extra_kind("language.bert.pooler.dense.weight") == "BERT pooler"
    assert release_extra_kind("language_backbone.body.model.pooler.dense.bias") == "BERT pooler"
    assert release_extra_kind("rpn.head.mlm_head.predictions.decoder.weight") == "MLM head"
    for key in ("rpn.head.extra_branch.weight", "language.bert.encoder.layer.0.output.dense.weight",
                "rpn.head.bbox_pred.weight", "backbone.swin.pooler.weight"):
        assert release_extra_kind(key) is None


def test_release_file_loads_the_model_entry_and_skips_extras_with_one_line(release, tiny_cfg, reference, caplog):
    torch.manual_seed(1)
    model = GLIP(tiny_cfg)
    with caplog.at_level(logging.WARNING, logger="glipcli.checkpoint"):
        assert load_checkpoint(model, release) == {"missing": [], "unexpected": []}
    _assert_holds_model_entry(model, reference)  # `model`, not `model_ema` (which is +1 everywhere)
    lines = [r.getMessage() for r in caplog.records if r.name == "glipcli.checkpoint"]
    assert lines == [f"{release}: ignored 8 checkpoint entries the model does not use (BERT pooler 2, MLM head 6)"]


def test_release_file_loads_through_load_model(release, tiny_cfg, reference):
    """The path `glip detect --weights` takes: parameters built empty, the file's tensors assigned."""
    model = load_model(ModelSource(tiny_cfg, release))
    _assert_holds_model_entry(model, reference)


def test_model_ema_is_used_only_when_there_is_no_model_entry(tiny_weights, tiny_cfg, reference, tmp_path):
    path = tmp_path / "ema_only.pth"
    torch.save({"model_ema": {"module." + k: v for k, v in tiny_weights.items()}, "iteration": 5}, path)
    model = GLIP(tiny_cfg)
    assert load_checkpoint(model, path) == {"missing": [], "unexpected": []}
    _assert_holds_model_entry(model, reference)


def test_other_extra_keys_still_refused(tiny_weights, tiny_cfg, tmp_path):
    weights = dict(tiny_weights, **{"rpn.head.extra_branch.weight": torch.zeros(3)})
    path = release_checkpoint(weights, tmp_path / "extra.pth")
    with pytest.raises(GlipError) as excinfo:
        load_checkpoint(GLIP(tiny_cfg), path)
    message = str(excinfo.value)
    assert "unexpected rpn.head.extra_branch.weight" in message and "\n" not in message
    assert "pooler" not in message and "mlm_head" not in message


def test_missing_key_still_refused(tiny_weights, tiny_cfg, tmp_path):
    weights = {k: v for k, v in tiny_weights.items() if k != "rpn.head.bbox_pred.weight"}
    path = release_checkpoint(weights, tmp_path / "missing.pth")
    with pytest.raises(GlipError, match=r"missing head\.bbox_pred\.weight"):
        load_checkpoint(GLIP(tiny_cfg), path)


def test_mis_shaped_key_still_refused(tiny_weights, tiny_cfg, tmp_path):
    weights = dict(tiny_weights)
    weights["rpn.head.bbox_pred.weight"] = torch.zeros(5, 64, 3, 3)
    path = release_checkpoint(weights, tmp_path / "shape.pth")
    with pytest.raises(GlipError, match=r"shape mismatch for head\.bbox_pred\.weight \(checkpoint \(5, 64, 3, 3\)"):
        load_checkpoint(GLIP(tiny_cfg), path)


def _mapped_resident_bytes(path: Path) -> int:
    """Bytes of `path` resident in this process's memory maps (/proc/self/smaps `Rss`)."""
    total, inside = 0, False
    target = str(path.resolve())
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and all(c in "0123456789abcdef-" for c in fields[0]):
            inside = len(fields) >= 6 and " ".join(fields[5:]) == target
        elif inside and fields[:1] == ["Rss:"]:
            total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc/self/smaps to see mapped pages")
def test_entries_other_than_model_are_never_read(tiny_weights, tmp_path):
    """Read the file, touch every tensor that is returned: only the `model` entry's pages become
    resident, not `model_ema` or the optimizer's moments (here 7x the weights)."""
    path = release_checkpoint(tiny_weights, tmp_path / "big.pth", moments=3)
    weights_bytes = sum(v.numel() * v.element_size() for v in tiny_weights.values())
    assert path.stat().st_size > 7 * weights_bytes
    state, _ = read_state_dict(path)
    assert not any(k.startswith("module.") for k in state)
    checksum = sum(float(v.double().sum()) for v in state.values())
    assert checksum == checksum  # every page of the returned tensors has been read
    resident = _mapped_resident_bytes(path)
    extras_bytes = sum(v.numel() * v.element_size() for v in _extras().values())
    assert weights_bytes <= resident <= weights_bytes + extras_bytes + 4 * 2**20, (resident, weights_bytes)
    del state
