"""Training: over-fitting a tiny model, exact resumption, the trainable sets of full tuning,
linear probing and prompt tuning, adapters, and `glip finetune` / `glip prompt-tune` end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml

from glipcli.cli.main import main
from glipcli.data.coco import load_coco
from glipcli.data.splits import roboflow_splits
from glipcli.engine.prompt_tuning import (PromptAdapter, adapter_offset_bytes, load_adapter, model_identity)
from glipcli.engine.train_config import TrainConfig
from glipcli.engine.trainable import LINEAR_PROBE_PARAMS, configure_trainable, param_groups
from glipcli.engine.trainer import TrainData, Trainer
from glipcli.errors import GlipError
from glipcli.modeling.glip import GLIP
from glipcli.prompts.caption import Phrase
from glipcli.prompts.encoding import encode_prompt
from training_utils import shapes_dataset, tiny_config


def _splits(root: Path, val: bool = True, test: bool = False) -> TrainData:
    splits = roboflow_splits(root)
    train = load_coco(splits["train"].ann, split="train")
    valid = load_coco(splits["valid"].ann, split="valid", reference=train) if val and "valid" in splits else None
    tst = load_coco(splits["test"].ann, split="test", reference=train) if test and "test" in splits else None
    return TrainData(train, valid, tst)


def _model(cfg, seed: int = 0) -> GLIP:
    torch.manual_seed(seed)
    return GLIP(cfg)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _Interrupt:
    """A step callback that interrupts the run after `at` optimiser steps: by raising
    KeyboardInterrupt, or by sending this process a real SIGINT (Ctrl-C)."""

    def __init__(self, at: int, how: str = "raise"):
        self.at, self.how = at, how

    def __call__(self, info) -> None:
        if info.global_step == self.at:
            if self.how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler: stop after this step
            else:
                raise KeyboardInterrupt


# -- over-fitting ---------------------------------------------------------------------------------------
def _overfit(golden_dir: Path, tmp_path: Path, epochs: int, copies: int):
    shapes_dataset(tmp_path / "data", train_images=2, val=False, size=(128, 96))
    data = _splits(tmp_path / "data", val=False)
    data = TrainData(data.train, data.train, data.train)  # validate and test on the training images
    losses = []
    config = TrainConfig(task="full", seed=0, epochs=epochs, copies=copies, batch_size=2, lr=1e-3, language_lr=1e-3,
                         augment=False, lr_patience=100, stop_patience=100)
    trainer = Trainer(_model(tiny_config(golden_dir, min_size=96, max_size=128, fusion_dim=256)), data, config,
                      tmp_path / "out",
                      progress=False, step_callback=lambda info: losses.append(info.losses))
    return trainer, trainer.fit(), losses


def test_tiny_model_overfits_two_images(golden_dir, tmp_path):
    """Fast variant (40 steps): the token-alignment loss (the classification part of GLIP's loss)
    falls by >= 90% and the training images are detected with AP50 >= 0.9."""
    trainer, result, losses = _overfit(golden_dir, tmp_path, epochs=2, copies=20)
    assert len(losses) == 40
    first = losses[0]["loss_dot_product_token"]
    last = sum(step["loss_dot_product_token"] for step in losses[-5:]) / 5
    assert last <= 0.1 * first, (first, last)
    assert result.metrics["test"]["metrics"]["AP50"] >= 0.9
    assert result.metrics["best"]["val"]["AP50"] >= 0.9


@pytest.mark.slow
def test_tiny_model_overfits_two_images_fully(golden_dir, tmp_path):
    """Longer run (300 steps): the loss terms that can reach zero -- GIoU regression and the token
    focal loss -- fall by >= 90% together, and the whole loss by more than half. (The centerness
    term is a BCE against soft targets: it cannot go below their entropy, about 0.6 here.)"""
    trainer, result, losses = _overfit(golden_dir, tmp_path, epochs=10, copies=30)

    def reducible(step):
        return step["loss_reg"] + step["loss_dot_product_token"]

    def mean_last(f):
        return sum(f(s) for s in losses[-10:]) / 10

    assert mean_last(reducible) <= 0.1 * reducible(losses[0])
    assert mean_last(lambda s: sum(s.values())) <= 0.5 * sum(losses[0].values())
    assert result.metrics["test"]["metrics"]["AP50"] >= 0.9


# -- exact resumption -----------------------------------------------------------------------------------
@pytest.mark.parametrize("interrupt_at, how", [(4, "sigint"), (3, "raise")])  # mid-epoch 2; end of epoch 1
def test_resume_after_interruption_gives_the_same_weights(golden_dir, tmp_path, interrupt_at, how):
    shapes_dataset(tmp_path / "data", train_images=3, val=False)
    data = _splits(tmp_path / "data", val=False)
    cfg = tiny_config(golden_dir, min_size=64, max_size=96, fusion_dim=256)
    # augmentation, dropout, DropPath and DropBlock all draw random numbers
    config = TrainConfig(task="full", seed=11, epochs=2, copies=2, batch_size=2, lr=1e-3)

    straight = Trainer(_model(cfg), data, config, tmp_path / "a", progress=False)
    straight.fit()
    expected = _snapshot(straight._glip())
    expected_optim = straight.optimizer.state_dict()

    first = Trainer(_model(cfg), data, config, tmp_path / "b", progress=False,
                    step_callback=_Interrupt(interrupt_at, how))
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    latest = json.loads((tmp_path / "b/checkpoints/latest.json").read_text())
    assert latest["global_step"] == interrupt_at
    resumed = Trainer(_model(cfg, seed=99), data, config, tmp_path / "b", resume=True, progress=False)
    resumed.fit()
    got = _snapshot(resumed._glip())
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    optim = resumed.optimizer.state_dict()
    for index, entry in expected_optim["state"].items():
        for name, value in entry.items():
            assert torch.equal(optim["state"][index][name], value), (index, name)
    steps = [json.loads(line) for line in (tmp_path / "b/log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in steps].count("resume") == 1
    # the checkpoint pointer names a complete folder; no temporary folder is left behind
    assert not list((tmp_path / "b/checkpoints").glob(".tmp-*"))


def test_resume_refuses_other_settings_and_runs_are_never_overwritten(golden_dir, tmp_path):
    shapes_dataset(tmp_path / "data", train_images=2, val=False)
    data = _splits(tmp_path / "data", val=False)
    cfg = tiny_config(golden_dir, min_size=64, max_size=96, fusion_dim=256)
    config = TrainConfig(task="full", seed=1, epochs=1, copies=1, batch_size=2)
    Trainer(_model(cfg), data, config, tmp_path / "out", progress=False).fit()
    before = (tmp_path / "out/model_best.safetensors").read_bytes()
    with pytest.raises(GlipError, match="already holds a training run"):
        Trainer(_model(cfg), data, config, tmp_path / "out", progress=False).fit()
    with pytest.raises(GlipError, match="has finished"):
        Trainer(_model(cfg), data, config, tmp_path / "out", resume=True, progress=False).fit()
    other = dataclasses.replace(config, batch_size=1)
    with pytest.raises(GlipError, match="--batch-size 2 \\(given: 1\\)"):
        Trainer(_model(cfg), data, other, tmp_path / "out", resume=True, progress=False).fit()
    with pytest.raises(GlipError, match="no training run to resume"):
        Trainer(_model(cfg), data, config, tmp_path / "nothing", resume=True, progress=False).fit()
    assert (tmp_path / "out/model_best.safetensors").read_bytes() == before


# -- trainable sets and optimiser groups --------------------------------------------------------------------
def test_trainable_sets_follow_the_official_overrides(golden_dir):
    cfg = tiny_config(golden_dir)
    model = _model(cfg)
    plan = configure_trainable(model, TrainConfig(task="linear-probe"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(plan.names)
    assert trainable == {"head.bbox_pred.weight", "head.bbox_pred.bias", "head.centerness.weight",
                         "head.centerness.bias", "head.token_projection.weight", "head.token_projection.bias",
                         "head.log_scale", "head.bias_lang", "head.bias0"}
    assert all(n.startswith(LINEAR_PROBE_PARAMS) for n in trainable)
    plan.set_train_mode(model)
    assert not model.backbone.training and not model.language.training and model.head.layers.training

    plan = configure_trainable(model, TrainConfig(task="full"))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.swin.patch_embed.", "backbone.swin.layers.0.", "head.cls_logits."))
                          for n in frozen)
    assert any(n.startswith("backbone.swin.layers.0.") for n in frozen)
    assert not any(n.startswith("backbone.swin.layers.1.") for n in frozen)
    plan.set_train_mode(model)
    assert model.training and not model.backbone.swin.layers[0].training and model.backbone.swin.layers[1].training

    configure_trainable(model, TrainConfig(task="prompt"))
    assert not any(p.requires_grad for p in model.parameters())


def test_optimiser_groups_are_the_official_ones(golden_dir):
    model = _model(tiny_config(golden_dir))
    config = TrainConfig(task="full").resolved()
    configure_trainable(model, config)
    groups = param_groups(model.named_parameters(), config)
    setting = {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["names"]}
    assert setting["language.bert.encoder.layer.0.attention.self.query.weight"] == (1e-5, 0.05)
    assert setting["language.bert.encoder.layer.0.attention.self.query.bias"] == (2e-5, 0.0)
    assert setting["head.bbox_pred.weight"] == (1e-4, 0.05)
    assert setting["head.bbox_pred.bias"] == (2e-4, 0.0)
    assert setting["head.bias_lang"] == (2e-4, 0.0)
    assert "head.cls_logits.weight" not in setting
    prompt = TrainConfig(task="prompt").resolved()
    assert (prompt.lr, prompt.weight_decay) == (0.05, 0.25)
    assert (config.lr, config.weight_decay, config.grad_clip, config.batch_size) == (1e-4, 0.05, 1.0, 4)


def test_linear_probe_changes_only_the_prediction_layers(golden_dir, tmp_path):
    shapes_dataset(tmp_path / "data", train_images=2, val=False)
    data = _splits(tmp_path / "data", val=False)
    model = _model(tiny_config(golden_dir, min_size=64, max_size=96, fusion_dim=256))
    before = _snapshot(model)
    config = TrainConfig(task="linear-probe", seed=0, epochs=1, copies=1, batch_size=2, lr=1e-2)
    Trainer(model, data, config, tmp_path / "out", progress=False).fit()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(LINEAR_PROBE_PARAMS) for k in changed)


# -- prompt tuning ------------------------------------------------------------------------------------------
def test_prompt_tuning_trains_only_the_offset(golden_dir, tmp_path):
    shapes_dataset(tmp_path / "data", train_images=2)
    data = _splits(tmp_path / "data")
    model = _model(tiny_config(golden_dir, min_size=64, max_size=96, fusion_dim=256))
    before = _snapshot(model)
    config = TrainConfig(task="prompt", seed=0, epochs=1, copies=1, batch_size=2)
    trainer = Trainer(model, data, config, tmp_path / "out", progress=False)
    result = trainer.fit()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen parameter changed"
    adapter = load_adapter(result.best_path)
    assert result.best_path.name == "adapter_best.safetensors"
    n = trainer.prompt.encoded.num_tokens
    assert adapter.offset.shape == (256, 64)
    assert adapter.offset[:n].abs().sum() > 0  # trained (lr 0.05)
    assert torch.count_nonzero(adapter.offset[n:]) == 0  # padding positions get no gradient
    assert adapter.caption == "red. blue" and adapter.class_names == ["red", "blue"]
    assert adapter.base == model_identity(model)
    groups = trainer.optimizer.param_groups
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.05, 0.25)]
    assert [p.shape for g in groups for p in g["params"]] == [torch.Size([256, 64])]

    # the adapter refuses other prompts and other base weights; attached, it offsets the text
    adapter.check_model(model)
    other = _model(tiny_config(golden_dir, min_size=64, max_size=96, fusion_dim=256), seed=5)
    with pytest.raises(GlipError, match="other weights"):
        adapter.check_model(other)
    with pytest.raises(GlipError, match="tuned for the prompt 'red. blue'"):
        adapter.check_prompt(encode_prompt("blue. red", [Phrase("blue", 0, 4), Phrase("red", 6, 9)]))
    prompt = adapter.encoded_prompt()
    ids, mask = prompt.input_ids[:, :n], prompt.attention_mask[:, :n]
    model.eval()
    with torch.no_grad():
        plain = model.encode_text(ids, mask)
        handle = adapter.attach(model)
        tuned = model.encode_text(ids, mask)
        with pytest.raises(GlipError, match="cannot be used with another prompt"):
            model.encode_text(ids.flip(-1), mask)
        handle.remove()
    assert torch.equal(tuned.hidden, plain.hidden + adapter.offset[:n])
    assert torch.equal(tuned.embedded, plain.embedded + adapter.offset[:n])


def test_adapter_for_glip_t_shapes_is_under_one_megabyte(tmp_path):
    assert adapter_offset_bytes(256, 768) == 786_432
    caption = ". ".join(f"class number {i}" for i in range(60))  # a long caption: the metadata grows too
    phrases, start = [], 0
    for i in range(60):
        text = f"class number {i}"
        phrases.append(Phrase(text, start, start + len(text)))
        start += len(text) + 2
    prompt = encode_prompt(caption, phrases)
    adapter = PromptAdapter(offset=torch.randn(256, 768), caption=caption,
                            input_ids=prompt.input_ids[0, :prompt.num_tokens].tolist(), phrases=phrases,
                            class_names=[p.text for p in phrases],
                            base={"config_name": "glip-t", "config_sha256": "0" * 64, "weights_sha256": "1" * 64},
                            prompt_yaml="classes:\n" + "".join(f"  - {p.text}\n" for p in phrases))
    path = adapter.save(tmp_path / "adapter.safetensors")
    assert path.stat().st_size <= 1_000_000
    loaded = load_adapter(path)
    assert torch.equal(loaded.offset, adapter.offset) and loaded.caption == caption and loaded.phrases == phrases
    from safetensors.torch import save_file

    save_file({"text_offset": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(GlipError, match="not a glip prompt adapter"):
        load_adapter(tmp_path / "other.safetensors")


# -- the command line -------------------------------------------------------------------------------------------
def _small_yaml(golden_dir: Path, folder: Path) -> Path:
    """The golden tiny config with small test images (the golden weights still fit)."""
    folder.mkdir(parents=True, exist_ok=True)
    tree = yaml.safe_load((golden_dir / "tiny/config.yaml").read_text())
    tree["INPUT"].update(MIN_SIZE_TEST=128, MAX_SIZE_TEST=160)
    (folder / "config.yaml").write_text(yaml.safe_dump(tree))
    shutil.copy(golden_dir / "tiny/bert_config.json", folder / "bert_config.json")
    return folder / "config.yaml"


def test_glip_finetune_on_a_real_dataset(shared_dir, golden_dir, tmp_path, capsys):
    config = _small_yaml(golden_dir, tmp_path / "cfg")
    weights = golden_dir / "tiny/weights.safetensors"
    out = tmp_path / "run"
    args = ["finetune", "--data", str(shared_dir / "data/real/rbc_roboflow"), "--config", str(config),
            "--weights", str(weights), "--shots", "1", "--epochs", "1", "--copies", "2", "--batch-size", "2",
            "--output", str(out), "--cpu", "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "ignored placeholder category 'RBC-WBC'" in err and "done: best epoch 1" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["caption"] == "rbc. wbc" and metrics["best_epoch"] == 1
    assert set(metrics["test"]["metrics"]) >= {"AP", "AP50", "AP75"} and metrics["test"]["num_images"] == 10
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["shots"] == 1 and run["config"]["lr"] == 1e-4 and run["config"]["stop_patience"] == 8
    assert 1 <= len(run["train_images"]) <= 2  # 1-shot of two classes
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and "step" in events and "eval" in events and events[-1] == "end"
    assert (out / "prompt.yaml").is_file() and (out / "model_best.safetensors").is_file()
    # the best model is a self-describing checkpoint for `glip detect`
    from glipcli.predictor import GLIPPredictor

    predictor = GLIPPredictor.from_pretrained(weights=out / "model_best.safetensors")
    assert predictor.cfg.input.min_size == 128
    # never overwritten; a finished run cannot be resumed
    assert main(args) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["finetune", "--output", str(out), "--resume", "--cpu"]) == 2
    assert "has finished" in capsys.readouterr().err


def test_glip_prompt_tune_cli_and_resume(golden_dir, tmp_path, capsys):
    shapes_dataset(tmp_path / "data", train_images=2)
    config = _small_yaml(golden_dir, tmp_path / "cfg")
    out = tmp_path / "run"
    base = ["prompt-tune", "--output", str(out), "--cpu", "--no-progress"]
    full = base + ["--data", str(tmp_path / "data"), "--config", str(config),
                   "--weights", str(golden_dir / "tiny/weights.safetensors"), "--epochs", "2", "--copies", "1",
                   "--batch-size", "2"]
    # interrupted after the first epoch's checkpoint: resume with nothing but --output
    from glipcli.engine import trainer as trainer_module

    original = trainer_module.Trainer._end_epoch
    calls = {"n": 0}

    def end_epoch_then_stop(self, epoch):
        original(self, epoch)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    trainer_module.Trainer._end_epoch = end_epoch_then_stop
    try:
        assert main(full) == 130
    finally:
        trainer_module.Trainer._end_epoch = original
    assert json.loads((out / "checkpoints/latest.json").read_text())["epoch"] == 1
    assert main(base + ["--resume", "--batch-size", "1"]) == 2
    assert "--batch-size 2, not 1" in capsys.readouterr().err
    assert main(base + ["--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["finished"]
    adapter = load_adapter(out / "adapter_best.safetensors")
    assert adapter.caption == "red. blue" and adapter.offset.shape == (256, 64)
    assert (out / "adapter_best.safetensors").stat().st_size < 100_000
    assert not math.isnan(float(adapter.offset.sum()))

    # `glip detect --adapter`: the tuned prompt by default, the same prompt accepted, any other refused
    image = next((tmp_path / "data" / "valid").glob("*.png"), None) or next((tmp_path / "data" / "valid").glob("*.jpg"))
    detect = ["detect", str(image), "--config", str(config), "--weights", str(golden_dir / "tiny/weights.safetensors"),
              "--adapter", str(out / "adapter_best.safetensors"), "--box-threshold", "0", "-q"]
    capsys.readouterr()
    assert main(detect + ["--json", str(tmp_path / "tuned.json")]) == 0
    tuned = json.loads((tmp_path / "tuned.json").read_text())[0]
    assert tuned["caption"] == "red. blue"
    assert main(detect + ["-p", "red. blue", "--json", str(tmp_path / "same.json")]) == 0
    assert json.loads((tmp_path / "same.json").read_text()) == [tuned]
    assert main(detect[:-5] + ["-p", "red. blue", "--box-threshold", "0", "-q", "--json", str(tmp_path / "plain.json")]) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())[0]
    assert plain["detections"] != tuned["detections"], "the adapter changed nothing"
    assert main(detect + ["-p", "blue. red"]) == 2
    assert "tuned for the prompt 'red. blue'" in capsys.readouterr().err
