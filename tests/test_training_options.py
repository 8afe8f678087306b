"""Few-shot tuning options beyond the official protocol (issue #17): `--freeze` of model parts and
per-part learning-rate factors for full fine-tuning, their checks, run records and resume, and
`glip bench synthetic` passing them (and the prompt-tuning lr / patience) to its tuning runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glipcli.cli.main import main
from glipcli.data.coco import load_coco
from glipcli.data.splits import roboflow_splits
from glipcli.engine.train_config import PARTS, TrainConfig
from glipcli.engine.trainable import configure_trainable, param_groups, part_modules, part_of
from glipcli.engine.trainer import TrainData, Trainer
from glipcli.errors import GlipError
from glipcli.modeling.glip import GLIP
from glipcli.nano.bench import SyntheticRequest
from training_utils import shapes_dataset, tiny_config


def _model(golden_dir: Path, **sizes) -> GLIP:
    torch.manual_seed(0)
    return GLIP(tiny_config(golden_dir, **sizes))


def _parts(model: GLIP) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {p: set() for p in PARTS}
    for name, _ in model.named_parameters():
        out[part_of(name)].add(name)
    return out


def test_every_parameter_belongs_to_one_part_by_the_module_tree(golden_dir):
    model = _model(golden_dir)
    parts = _parts(model)
    assert all(parts.values()), parts.keys()
    assert all(n.startswith("backbone.") for n in parts["backbone"])
    assert any(n.startswith("backbone.fpn.") for n in parts["backbone"])  # the image encoder is Swin + FPN
    assert all(".fusion." in n or ".text_layer." in n for n in parts["fusion"])
    assert "head.layers.0.dyconv" in " ".join(parts["head"]) and "head.log_scale" in parts["head"]
    assert part_of("glip.head.layers.0.fusion.x") == "fusion" and part_of("text_offset.weight") is None
    # part_modules covers exactly the parameters part_of assigns (loose head parameters aside)
    for part in PARTS:
        covered = {id(p) for m in part_modules(model, part) for p in m.parameters()}
        named = {id(p) for n, p in model.named_parameters() if part_of(n) == part and "." in n.removeprefix("head.")}
        assert named <= covered and covered <= {id(p) for n, p in model.named_parameters() if part_of(n) == part}


def test_default_config_gives_the_official_groups_and_trainable_set(golden_dir):
    model = _model(golden_dir)
    config = TrainConfig(task="full").resolved()
    assert config.freeze == () and config.frozen_parts == ()
    assert (config.backbone_lr_factor, config.fusion_lr_factor, config.head_lr_factor) == (1.0, 1.0, 1.0)
    plan = configure_trainable(model, config)
    groups = param_groups(model.named_parameters(), config)
    # the official rule (solver/build.py make_optimizer), written out independently
    expected: dict[str, tuple[float, float]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            lr = 1e-5 if name.startswith("language.") else 1e-4
            expected[name] = (lr * 2, 0.0) if "bias" in name else (lr, 0.05)
    got = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert got == expected
    assert len(groups) == len(set(expected.values()))  # one group per (lr, weight decay)
    assert set(plan.names) == set(expected) and all(not n.startswith("backbone.swin.layers.1.")
                                                    for n in set(dict(model.named_parameters())) - set(expected))


def test_freeze_and_lr_factors_in_the_trainable_set_modes_and_groups(golden_dir):
    model = _model(golden_dir)
    config = TrainConfig(task="full", freeze=("fusion", "backbone"), head_lr_factor=3.0).resolved()
    assert config.freeze == ("backbone", "fusion")  # PARTS order, whatever order given
    plan = configure_trainable(model, config)
    parts = _parts(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not trainable & (parts["backbone"] | parts["fusion"])
    assert parts["language"] <= trainable and parts["head"] - {"head.cls_logits.weight", "head.cls_logits.bias"} \
        <= trainable
    plan.set_train_mode(model)
    assert not model.backbone.training and not model.backbone.fpn.training
    assert not model.head.layers[0].fusion.training and not model.head.layers[0].text_layer.training
    assert model.head.layers[0].dyconv.training and model.language.training
    groups = param_groups(model.named_parameters(), config)
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert set(lr) == trainable  # frozen parameters are not in the optimiser
    assert lr["head.bbox_pred.weight"] == pytest.approx(3e-4) and lr["head.bbox_pred.bias"] == pytest.approx(6e-4)
    assert lr["language.bert.encoder.layer.0.attention.self.query.weight"] == 1e-5  # own lr, no factor

    model = _model(golden_dir)
    config = TrainConfig(task="full", backbone_lr_factor=0.5, fusion_lr_factor=0.1).resolved()
    configure_trainable(model, config)
    lr = {n: g["lr"] for g in param_groups(model.named_parameters(), config) for n in g["names"]}
    assert lr[next(n for n in lr if n.startswith("backbone.fpn.") and n.endswith("weight"))] == pytest.approx(5e-5)
    assert lr[next(n for n in lr if n.startswith("backbone.swin.") and n.endswith("weight"))] == pytest.approx(5e-5)
    fusion_weight = next(n for n in lr if ".fusion." in n and n.endswith("weight"))
    assert lr[fusion_weight] == pytest.approx(1e-5)
    assert lr[next(n for n in lr if ".text_layer." in n and n.endswith("bias"))] == pytest.approx(2e-5)
    assert lr["head.bbox_pred.weight"] == 1e-4


def test_language_lr_zero_is_freezing_the_language_backbone(golden_dir):
    config = TrainConfig(task="full", language_lr=0.0).resolved()
    assert config.frozen_parts == ("language",)
    model = _model(golden_dir)
    plan = configure_trainable(model, config)
    assert not any(p.requires_grad for p in model.language.parameters())
    plan.set_train_mode(model)
    assert not model.language.training
    assert TrainConfig(task="full", freeze=("language",)).frozen_parts == config.frozen_parts


def test_a_training_step_changes_only_what_is_not_frozen(golden_dir, tmp_path):
    shapes_dataset(tmp_path / "data", train_images=2, val=False)
    splits = roboflow_splits(tmp_path / "data")
    data = TrainData(load_coco(splits["train"].ann, split="train"), None, None)
    model = _model(golden_dir, min_size=64, max_size=96, fusion_dim=256)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = TrainConfig(task="full", seed=0, epochs=1, copies=1, batch_size=2, lr=1e-2, language_lr=1e-3,
                         freeze=("backbone", "fusion"))
    trainer = Trainer(model, data, config, tmp_path / "out", progress=False)
    trainer.fit()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("backbone.") or ".fusion." in k or ".text_layer." in k for k in changed)
    assert any(k.startswith("head.layers.0.dyconv.") for k in changed)
    assert any(k.startswith("head.bbox_pred.") for k in changed)
    assert any(k.startswith("language.") for k in changed)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert sorted(lrs) == pytest.approx([1e-3, 2e-3, 1e-2, 2e-2]) and lrs[0] == 1e-3  # the language group first
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["config"]["freeze"] == ["backbone", "fusion"] and run["config"]["language_lr"] == 1e-3
    steps = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert {e["lr"] for e in steps if e.get("event") == "step"} == {1e-2}  # the log reports the base lr


@pytest.mark.parametrize("options, message", [
    (dict(freeze=("neck",)), "--freeze: unknown part 'neck'; choose from backbone, language, fusion, head"),
    (dict(fusion_lr_factor=0.0), "--fusion-lr-factor must be a finite number > 0 (got 0.0)"),
    (dict(backbone_lr_factor=float("nan")), "--backbone-lr-factor must be a finite number > 0"),
    (dict(freeze=("head",), head_lr_factor=2.0), "--head-lr-factor 2.0 has no effect: --freeze head freezes it"),
    (dict(task="prompt", freeze=("backbone",)), "--freeze: for full fine-tuning only (this run's task is 'prompt')"),
    (dict(task="linear-probe", fusion_lr_factor=0.1), "--fusion-lr-factor: for full fine-tuning only"),
])
def test_settings_are_checked_with_one_line(options, message):
    with pytest.raises(GlipError) as info:
        TrainConfig(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_settings_round_trip_through_the_run_record_and_resume_compares_them():
    config = TrainConfig(task="full", freeze=("language", "backbone"), fusion_lr_factor=0.1)
    stored = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))  # a tuple comes back as a list
    assert stored == config and stored.freeze == ("backbone", "language")
    assert stored.resumed_with({"freeze": ("backbone", "language"), "fusion_lr_factor": 0.1}) == config
    assert stored.resumed_with({"freeze": ["language", "backbone"]}) == config  # as the Python API may give it
    with pytest.raises(GlipError, match="started with --freeze"):
        stored.resumed_with({"freeze": ("backbone",)})
    with pytest.raises(GlipError, match="started with --fusion-lr-factor 0.1, not 1.0"):
        stored.resumed_with({"fusion_lr_factor": 1.0})
    # a run recorded before these settings existed resumes with the official ones
    old = {k: v for k, v in TrainConfig(task="full").to_dict().items()
           if k not in ("freeze", "backbone_lr_factor", "fusion_lr_factor", "head_lr_factor")}
    assert TrainConfig.from_dict(old) == TrainConfig(task="full")


@pytest.mark.parametrize("args, message", [
    (["--freeze", "neck"], "--freeze: unknown part 'neck'"),
    (["--fusion-lr-factor", "0"], "--fusion-lr-factor must be a number above 0, at most 100 (got 0.0)"),
    (["--backbone-lr-factor", "nan"], "--backbone-lr-factor must be a number above 0"),
    (["--head-lr-factor", "1e9"], "--head-lr-factor must be a number above 0, at most 100"),
    (["--mode", "linear-probe", "--freeze", "backbone"],
     "--freeze: for full fine-tuning only (this run's task is 'linear-probe')"),
])
def test_finetune_cli_refuses_bad_values_with_one_line(tmp_path, capsys, args, message):
    shapes_dataset(tmp_path / "data", train_images=1)
    assert main(["finetune", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"), "--cpu",
                 "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "run.json").exists()


def test_finetune_cli_records_the_options_and_resume_keeps_them(golden_dir, tmp_path, capsys):
    from test_training import _small_yaml

    shapes_dataset(tmp_path / "data", train_images=2)
    config = _small_yaml(golden_dir, tmp_path / "cfg")
    out = tmp_path / "run"
    base = ["finetune", "--output", str(out), "--cpu", "--no-progress"]
    args = base + ["--data", str(tmp_path / "data"), "--config", str(config), "--weights",
                   str(golden_dir / "tiny/weights.safetensors"), "--epochs", "1", "--copies", "1", "--batch-size",
                   "2", "--freeze", "backbone,language", "--freeze", "fusion", "--head-lr-factor", "0.5"]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())["config"]
    assert run["freeze"] == ["backbone", "language", "fusion"] and run["head_lr_factor"] == 0.5
    assert run["fusion_lr_factor"] == 1.0
    capsys.readouterr()
    assert main(base + ["--resume", "--freeze", "backbone"]) == 2
    err = capsys.readouterr().err
    assert "started with --freeze" in err and len(err.strip().splitlines()) == 1


def test_bench_request_names_its_tuning_variants():
    official = SyntheticRequest()
    assert official.variant("full") == "" and official.variant("prompt") == ""
    req = SyntheticRequest(freeze=("language", "backbone"), fusion_lr_factor=0.1, prompt_lr=0.01, prompt_patience=20,
                           prompt_lr_patience=10)
    assert req.variant("full") == "--freeze-backbone+language--fusion-lr-x0.1"
    assert req.variant("prompt") == "--lr-0.01--patience-20--lr-patience-10"
    assert SyntheticRequest(prompt_patience=20).tuning_options("prompt") == {"stop_patience": 20}
    assert req.tuning_options("full") == {"freeze": ("backbone", "language"), "fusion_lr_factor": 0.1}
    assert req.data_identity() == official.data_identity()  # variants share the folder and its data
    with pytest.raises(GlipError, match="--freeze: unknown part"):
        SyntheticRequest(freeze=("neck",))
    with pytest.raises(GlipError, match="has no effect"):
        SyntheticRequest(freeze=("fusion",), fusion_lr_factor=0.1)
    with pytest.raises(GlipError, match="--prompt-lr-patience must be a whole number >= 0"):
        SyntheticRequest(prompt_lr_patience=-1)


def test_bench_synthetic_passes_the_options_to_its_tuning_runs(tmp_path, capsys):
    from test_pretrain import _tiny_model, save_safetensors

    weights = tmp_path / "tiny.safetensors"
    save_safetensors(_tiny_model(), weights)
    out = tmp_path / "bench"
    args = ["bench", "synthetic", "--weights", str(weights), "--images", "2", "--train-images", "2",
            "--valid-images", "1", "--shots", "1", "--epochs", "1", "--output", str(out), "--device", "cpu",
            "--val-shots", "0", "--patience", "3", "--freeze", "backbone", "--fusion-lr-factor", "0.5",
            "--prompt-patience", "5", "--prompt-lr", "0.01", "--prompt-lr-patience", "4", "--quiet"]
    assert main(args) == 0
    cells = {p.name for p in (out / "cells").iterdir()}
    assert "novel-shape__finetune--freeze-backbone--fusion-lr-x0.5.json" in cells
    assert "novel-shape__prompt-tune--lr-0.01--patience-5--lr-patience-4.json" in cells
    assert "novel-shape__finetune.json" not in cells and "novel-shape__prompt-tune.json" not in cells
    full = json.loads((out / "runs" / "novel-shape-full-1shot--freeze-backbone--fusion-lr-x0.5" / "run.json")
                      .read_text())["config"]
    assert full["freeze"] == ["backbone"] and full["fusion_lr_factor"] == 0.5 and full["stop_patience"] == 3
    prompt = json.loads((out / "runs" / "novel-shape-prompt-1shot--lr-0.01--patience-5--lr-patience-4" / "run.json")
                        .read_text())["config"]
    assert prompt["lr"] == 0.01 and prompt["stop_patience"] == 5 and prompt["lr_patience"] == 4
    assert prompt["freeze"] == [] and full["lr_patience"] != 4
    results = json.loads((out / "results.json").read_text())
    settings = [r["setting"] for r in results["rows"]]
    assert "1-shot fine-tuning (full model; freeze-backbone fusion-lr-x0.5)" in settings
    assert results["cells"]["novel-shape/finetune"]["options"] == {"freeze": ["backbone"], "fusion_lr_factor": 0.5}
    capsys.readouterr()
    assert main(args + ["--fusion-lr-factor", "-1"]) == 2
    assert "--fusion-lr-factor must be a number above 0" in capsys.readouterr().err
