"""Reliability, round 2: the mechanisms that close each class of defect.

- bounded messages: `excerpt` and the GlipError cap; YAML/JSON bounded in size and depth before use
  (a "billion laughs" prompt file, nesting deep enough for RecursionError);
- a checkpoint's declared architecture held against its tensors before any model is built;
- one output guard: resolved paths, no duplicate outputs, no output equal to an input, regular
  files only, every file of a run folder guarded;
- readers: damaged run records, checkpoint pointers, config metadata, adapters, non-text keys;
  writers: a library's own disk-full error type;
- numeric options range-checked by the parser (every float/int option of every command);
  JSON never holds NaN; training stops on a diverged loss instead of saving NaNs;
- categories grounded by the same words refused; a K-shot request a class cannot meet warned;
- a run folder without a checkpoint restarts on `--resume`.

The fuzzing of every reader is in tests/test_reliability_fuzz.py.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
import typing
from pathlib import Path

import pytest
import torch
from PIL import Image

from glipcli.errors import MAX_MESSAGE_CHARS, GlipError, excerpt
from reliability_utils import assert_one_line_error, glip, write_tiny_weights
from training_utils import shapes_dataset

BILLION_LAUGHS = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    + ["classes: *i"]) + "\n"


def _image(path: Path, size=(48, 32)) -> Path:
    Image.new("RGB", size, (90, 140, 60)).save(path)
    return path


# -- bounded messages and structures -------------------------------------------------------------
def test_excerpt_is_bounded_in_length_and_time():
    shared = ["x" * 1000]
    for _ in range(30):  # 2^30 leaves when expanded: repr() would never finish
        shared = [shared, shared]
    start = time.perf_counter()
    for value in (shared, "y" * 10**7, 10**5000, {i: i for i in range(10**5)}):
        assert len(excerpt(value)) <= 80
    assert time.perf_counter() - start < 1.0
    assert excerpt("dog") == "'dog'" and excerpt(3) == "3"  # short values: exactly their repr


def test_glip_error_messages_are_capped():
    message = str(GlipError("x: " + "z" * 10**6))
    assert len(message) <= MAX_MESSAGE_CHARS and "characters cut" in message


def test_billion_laughs_prompt_file_is_one_short_line_fast(tmp_path, capsys):
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 600
    start = time.perf_counter()
    code, _, err = glip(capsys, "prompt", "show", bomb)
    assert time.perf_counter() - start < 10
    line = assert_one_line_error(code, err, str(bomb), "too large once expanded")
    assert len(line) < 400


@pytest.mark.parametrize("text", ["[" * 20_000, "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200)),
                                  "- " * 5000 + "x"])
def test_deep_yaml_is_one_line(tmp_path, capsys, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    code, _, err = glip(capsys, "prompt", "show", path)
    assert_one_line_error(code, err, str(path))


def test_self_referencing_yaml_is_refused(tmp_path):
    from glipcli.io import parse_yaml

    with pytest.raises(GlipError, match="contains itself"):
        parse_yaml("a: &a [*a]\n", "loop.yaml")


def test_deep_json_is_one_line_before_the_model(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text("[" * 200_000 + "]" * 200_000)
    code, _, err = glip(capsys, "detect", _image(tmp_path / "a.png"), "-p", "dog", "--coco-gt", gt,
                        "--coco-results", tmp_path / "out.json", "--weights", tmp_path / "never-read.safetensors")
    assert_one_line_error(code, err, str(gt), "nested too deeply")


# -- a checkpoint's declared architecture ------------------------------------------------------------
def _declared_checkpoint(path: Path, config: dict | str, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    from safetensors.torch import save_file

    text = config if isinstance(config, str) else json.dumps(config)
    tensors = tensors or {"backbone.swin.patch_embed.proj.weight": torch.zeros(4, 3, 4, 4)}
    save_file(tensors, str(path), metadata={"format": "glipcli", "config": text})
    return path


def _preset_dict(name: str = "glip-t") -> dict:
    from glipcli.config import get_preset

    return get_preset(name).to_dict()


def test_declared_architecture_is_checked_before_building(tmp_path, capsys):
    """A 3 KB file claiming a 4096-wide Swin is refused from the shapes, with no model built."""
    config = _preset_dict()
    config["swin"]["embed_dim"] = 4096
    weights = _declared_checkpoint(tmp_path / "liar.safetensors", config)
    assert weights.stat().st_size < 8000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = glip(capsys, "detect", _image(tmp_path / "a.png"), "-p", "dog", "--weights", weights)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert_one_line_error(code, err, str(weights), "do not fit its declared architecture")
    assert grown_mb < 400, grown_mb


@pytest.mark.parametrize("config, reason", [
    ("not json {", "not valid JSON"),
    ("[1, 2]", "damaged config metadata"),
    (json.dumps({"name": "x"}), "damaged config metadata"),
    ("[" * 50_000, "nested too deeply"),
])
def test_malformed_config_metadata_is_one_line(tmp_path, capsys, config, reason):
    weights = _declared_checkpoint(tmp_path / "bad.safetensors", config)
    code, _, err = glip(capsys, "detect", _image(tmp_path / "a.png"), "-p", "dog", "--weights", weights)
    assert_one_line_error(code, err, str(weights), reason)


@pytest.mark.parametrize("field, value", [(("head", "num_layers"), 100_000), (("swin", "window_size"), 10**9),
                                          (("swin", "depths"), list(range(40))), (("head", "channels"), "wide")])
def test_unreasonable_declared_numbers_are_refused_before_building(tmp_path, capsys, field, value):
    config = _preset_dict()
    config[field[0]][field[1]] = value
    weights = _declared_checkpoint(tmp_path / "odd.safetensors", config)
    start = time.perf_counter()
    code, _, err = glip(capsys, "detect", _image(tmp_path / "a.png"), "-p", "dog", "--weights", weights)
    assert time.perf_counter() - start < 20
    assert_one_line_error(code, err, str(weights), "declared architecture")


def test_non_text_state_dict_keys_are_one_line(tmp_path, capsys):
    path = tmp_path / "odd.pth"
    torch.save({"model": {1: torch.zeros(2), "backbone.body.x": torch.zeros(2)}}, path)
    code, _, err = glip(capsys, "detect", _image(tmp_path / "a.png"), "-p", "dog", "--model", "glip-t",
                        "--weights", path)
    assert_one_line_error(code, err, str(path), "non-text key")


# -- the output guard ----------------------------------------------------------------------------------
def test_guard_rules(tmp_path):
    from glipcli.outputs import OutputGuard

    image = _image(tmp_path / "in.png")
    (tmp_path / "sub").mkdir()
    guard = OutputGuard(overwrite=True, inputs=[image])
    with pytest.raises(GlipError, match="is also an input"):
        guard.file(tmp_path / "sub" / ".." / "in.png", "--json")  # another spelling of the input
    os.symlink(image, tmp_path / "link.png")
    with pytest.raises(GlipError, match="is also an input"):
        guard.file(tmp_path / "link.png", "--json")
    guard.file(tmp_path / "out.json", "--json")
    with pytest.raises(GlipError, match="same file as the output of --json"):
        guard.file(tmp_path / "sub" / ".." / "out.json", "--coco-results")
    for special in ("/dev/null", "/proc/self/status", "/sys/kernel/notes"):
        with pytest.raises(GlipError, match="not a regular file"):
            guard.file(special, "--json")
    with pytest.raises(GlipError, match="is a folder"):
        guard.file(tmp_path / "sub", "--json")
    (tmp_path / "file").write_text("x")
    with pytest.raises(GlipError, match="is a file, not a folder"):
        guard.file(tmp_path / "file" / "deeper" / "out.json", "--json")
    with pytest.raises(GlipError, match="already exists"):
        OutputGuard(overwrite=False).file(tmp_path / "file", "--json")


def test_guard_run_folder(tmp_path):
    from glipcli.outputs import OutputGuard

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("mine\n")
    with pytest.raises(GlipError, match="already holds a training run .log.jsonl"):
        OutputGuard().run_folder(tmp_path / "run", ["run.json", "log.jsonl"], "--output", what="training run")
    OutputGuard().run_folder(tmp_path / "run", ["run.json", "log.jsonl"], "--output", resume=True)
    with pytest.raises(GlipError, match="an input of this run"):
        OutputGuard(inputs=[tmp_path / "run" / "run.json"]).run_folder(tmp_path / "run", ["run.json"], "--output")


def test_detect_outputs_resolved_against_each_other_and_the_inputs(tmp_path, capsys):
    image = _image(tmp_path / "a.png")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [], "categories": []}))
    never = ["--weights", tmp_path / "never-read.safetensors"]
    code, _, err = glip(capsys, "detect", image, "-p", "dog", "--json", tmp_path / "out.json", "--coco-gt", gt,
                        "--coco-results", f"{tmp_path}/./out.json", *never)
    assert_one_line_error(code, err, "the same file as the output of --json")
    for target in (image, gt):
        code, _, err = glip(capsys, "detect", image, "-p", "dog", "--json", target, "--overwrite",
                            "--coco-gt", gt, "--coco-results", tmp_path / "c.json", *never)
        assert_one_line_error(code, err, "is also an input")
    assert gt.read_text().startswith("{") and Image.open(image).size == (48, 32)
    code, _, err = glip(capsys, "detect", image, "-p", "dog", "--json", "/dev/null", "--overwrite", *never)
    assert_one_line_error(code, err, "/dev/null", "not a regular file")


def test_save_vis_never_renders_over_an_input(tmp_path, capsys):
    """b.gif is rendered as b.png: into the input folder, that would replace the user's b.png."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    _image(folder / "b.png")
    Image.new("P", (40, 30)).save(folder / "b.gif")
    before = (folder / "b.png").read_bytes()
    code, _, err = glip(capsys, "ground", folder / "b.gif", folder / "b.png", "a dog", "--save-vis", folder,
                        "--overwrite", "--weights", tmp_path / "never-read.safetensors")
    assert_one_line_error(code, err, "b.gif", "is also an input")
    assert (folder / "b.png").read_bytes() == before


def test_finetune_refuses_a_folder_holding_the_users_files(tmp_path, capsys):
    for name in ("prompt.yaml", "log.jsonl"):
        out = tmp_path / name.replace(".", "-")
        out.mkdir()
        (out / name).write_text("mine\n")
        code, _, err = glip(capsys, "finetune", "--output", out, "--data", tmp_path / "nowhere")
        assert_one_line_error(code, err, str(out), name, "--resume")
        assert (out / name).read_text() == "mine\n"


@pytest.mark.parametrize("store", ["cells", "predictions"])
def test_bench_never_writes_into_a_folder_of_foreign_results(tmp_path, store):
    from glipcli.bench.results import ResultsStore
    from glipcli.bench.standard import PredictionLog

    out = tmp_path / "mine"
    out.mkdir()
    name = "results.md" if store == "cells" else "result.json"
    (out / name).write_text("my notes\n")
    with pytest.raises(GlipError, match=f"already holds a benchmark run .{name}"):
        if store == "cells":
            ResultsStore(out, run={"model": "nano"})
        else:
            PredictionLog(out / "predictions.jsonl", {"model": "nano"})
    assert (out / name).read_text() == "my notes\n"
    if store == "cells":  # a folder of our own run continues
        fresh = tmp_path / "ours"
        ResultsStore(fresh, run={"model": "nano"})
        (fresh / "results.md").write_text("tables\n")
        ResultsStore(fresh, run={"model": "nano"})


# -- readers and writers -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, reason", [
    ("[]", "not a JSON object"), ('{"task": "full"}', "'config' missing"), ("{" * 10_000, "not valid JSON"),
    ('{"task": "full", "config": {}, "model_config": {}, "data": {"train": 3}, "source": {}}', "training split"),
])
def test_damaged_run_records_are_one_line(tmp_path, capsys, text, reason):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(text)
    code, _, err = glip(capsys, "finetune", "--output", out, "--resume")
    assert_one_line_error(code, err, "run.json", reason)


@pytest.mark.parametrize("pointer", ['["x"]', '{"name": 3}', '{"name": "../../etc"}', "[" * 10_000])
def test_damaged_checkpoint_pointers_are_one_line(tmp_path, pointer):
    from glipcli.engine import training_state as ckpt

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.json").write_text(pointer)
    with pytest.raises(GlipError, match="latest.json"):
        ckpt.latest(tmp_path)


def test_damaged_adapter_metadata_is_one_line(tmp_path):
    from safetensors.torch import save_file

    from glipcli.engine.prompt_tuning import ADAPTER_FORMAT, ADAPTER_VERSION, OFFSET_KEY, load_adapter

    path = tmp_path / "a.safetensors"
    save_file({OFFSET_KEY: torch.zeros(4, 8)}, str(path),
              metadata={"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "caption": "dog",
                        "phrases": "[" * 10_000, "input_ids": "[1]", "class_names": "[]", "base_model": "{}"})
    with pytest.raises(GlipError, match="phrases: not valid JSON"):
        load_adapter(path)


def test_disk_full_from_safetensors_own_error_type_is_one_line(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from glipcli.checkpoint import save_safetensors

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              '"No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"previous")
    with pytest.raises(GlipError, match="no space left on device"):
        save_safetensors(_Tiny(), target)
    assert target.read_bytes() == b"previous"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        from glipcli.config import get_preset

        self.cfg = get_preset("nano")


def test_write_failure_reason_reads_library_messages():
    from glipcli.io import write_failure_reason

    assert write_failure_reason(RuntimeError("failed (os error 28)")) == "no space left on device"
    assert write_failure_reason(RuntimeError("[Errno 13] denied")) == "permission denied"
    assert write_failure_reason(ValueError("a bug")) is None


# -- numbers -------------------------------------------------------------------------------------------
def _numeric_options():
    """(command, parameter, OptionInfo) of every int/float option of every command."""
    import typer

    from glipcli.cli.main import app

    def commands(typer_app, prefix=""):
        for info in typer_app.registered_commands:
            yield f"{prefix}{info.name or info.callback.__name__.replace('_', '-')}", info.callback
        for group in typer_app.registered_groups:
            yield from commands(group.typer_instance, f"{prefix}{group.name} ")

    for name, callback in commands(app):
        hints = typing.get_type_hints(callback, include_extras=True)
        for param, hint in hints.items():
            if typing.get_origin(hint) is not typing.Annotated:
                continue
            base, *extras = typing.get_args(hint)
            inner = [a for a in typing.get_args(base) if a is not type(None)] or [base]
            if inner[0] in (int, float):
                option = next((e for e in extras if isinstance(e, (typer.models.OptionInfo,
                                                                   typer.models.ArgumentInfo))), None)
                yield name, param, option


def test_every_numeric_option_is_range_checked():
    """The mechanism: a float or int option without a range check from `glipcli.cli.ranges` fails
    here (NaN, infinity and 10^30 would otherwise pass the parser)."""
    found = list(_numeric_options())
    assert len(found) > 40
    unchecked = [f"{c} --{p}" for c, p, o in found if not hasattr(getattr(o, "callback", None), "glip_range")]
    assert not unchecked, unchecked


@pytest.mark.parametrize("args, needle", [
    (["detect", "a.png", "-p", "x", "--box-threshold", "2"], "--box-threshold must be a number from 0 to 1"),
    (["detect", "a.png", "-p", "x", "--box-threshold", "nan"], "(got nan)"),
    (["ground", "a.png", "x", "--box-threshold", "inf"], "(got inf)"),
    (["finetune", "--output", "o", "--lr", "inf"], "--lr must be a number above 0, at most 10"),
    (["finetune", "--output", "o", "--lr", "1e38"], "--lr"),
    (["prompt-tune", "--output", "o", "--lr", "nan"], "--lr"),
    (["finetune", "--output", "o", "--weight-decay", "nan"], "--weight-decay"),
    (["finetune", "--output", "o", "--lr", "0"], "--lr"),
    (["finetune", "--output", "o", "--seed", str(10**30)], "--seed must be a whole number from 0 to"),
    (["pretrain", "--output", "o", "--grounding-ratio", "1.5"], "--grounding-ratio"),
    (["pretrain", "--output", "o", "--minutes", "-1"], "--minutes"),
    (["synth-data", "o", "--seed", "-3"], "--seed"),
    (["bench", "synthetic", "--shots", str(2**40)], "--shots"),
])
def test_numeric_options_out_of_range_are_one_line(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = glip(capsys, *args)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()


def test_library_training_config_refuses_non_finite_values():
    from glipcli.engine.train_config import TrainConfig

    for bad in (dict(lr=float("nan")), dict(weight_decay=float("inf")), dict(seed=2**40)):
        with pytest.raises(GlipError):
            TrainConfig(**bad)


def test_json_never_holds_nan(tmp_path):
    from glipcli.io import write_json

    with pytest.raises(GlipError, match="not a finite number"):
        write_json(tmp_path / "r.json", [{"score": float("nan")}])
    assert not (tmp_path / "r.json").exists()


# -- training ----------------------------------------------------------------------------------------------
def test_divergence_check_stops_after_consecutive_non_finite_steps():
    from glipcli.engine.divergence import MAX_NONFINITE_STEPS, DivergenceCheck, check_finite

    check = DivergenceCheck()
    for step in range(MAX_NONFINITE_STEPS - 1):
        check.step(False, step, math.nan)
    check.step(True, 9, 1.0)  # a good step resets the count
    for step in range(MAX_NONFINITE_STEPS - 1):
        check.step(False, step, math.nan)
    with pytest.raises(GlipError, match="training diverged"):
        check.step(False, 99, math.inf)
    with pytest.raises(GlipError, match="checkpoint not saved"):
        check_finite([torch.tensor([1.0, math.nan])], "the checkpoint")


def test_categories_grounded_alike_are_refused():
    from glipcli.data.training_prompt import build_training_prompt

    with pytest.raises(GlipError, match="could not tell them apart"):
        build_training_prompt(["rac_coon", "rac coon"], 256)
    build_training_prompt(["raccoon", "rac coon"], 256)


RUN_OPTIONS = ["--epochs", "2", "--batch-size", "2", "--seed", "7", "--cpu", "--no-progress"]


@pytest.fixture(scope="module")
def training(golden_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guards")
    data = shapes_dataset(root / "data", train_images=2, val=False, size=(96, 64))
    return {"root": root, "data": data, "weights": write_tiny_weights(golden_dir, root / "tiny.safetensors")}


def _finetune(training, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--data", training["data"], "--weights", training["weights"], "--output", out,
            *RUN_OPTIONS, *extra]


@pytest.mark.parametrize("fault", ["loss", "weights"])
def test_a_diverging_run_stops_without_saving_non_finite_weights(training, tmp_path, capsys, monkeypatch, fault):
    """A loss that stays NaN stops the run after a few steps; weights gone NaN are never saved."""
    import glipcli.engine.trainer as trainer_module

    if fault == "loss":
        real = trainer_module.GLIPLoss

        def nan_loss(*args, **kwargs):
            loss = real(*args, **kwargs)
            return lambda *a, **k: {key: value * math.nan for key, value in loss(*a, **k).items()}

        monkeypatch.setattr(trainer_module, "GLIPLoss", nan_loss)
    else:
        def nan_step(self, closure=None):
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(math.nan)

        monkeypatch.setattr(torch.optim.AdamW, "step", nan_step)
    out = tmp_path / "run"
    code, _, err = glip(capsys, *_finetune(training, out, "--lr", "0.001", "--epochs", "8"))
    assert code == 2 and "Traceback" not in err, err  # the run's progress lines, then one error line
    assert err.strip().splitlines()[-1].startswith("error: training diverged"), err
    from safetensors import safe_open

    for path in out.rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            assert all(bool(torch.isfinite(f.get_tensor(k)).all()) for k in f.keys() if "optim" not in k), path
    if fault == "weights":
        assert not (out / "model_best.safetensors").exists()
    for line in (out / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in log.jsonl"))


def test_resume_restarts_a_run_killed_before_its_first_checkpoint(training, tmp_path, capsys):
    straight = tmp_path / "straight"
    assert glip(capsys, *_finetune(training, straight, "--lr", "0.001", "--shots", "5"))[0] == 0
    out = tmp_path / "killed"
    out.mkdir()
    for name in ("run.json", "prompt.yaml", "log.jsonl"):  # what exists before the first checkpoint
        (out / name).write_bytes((straight / name).read_bytes())
    code, _, err = glip(capsys, "finetune", "--output", out, "--resume", "--cpu", "--no-progress")
    assert code == 0, err
    assert "holds no checkpoint yet" in err and "starting it afresh" in err
    from safetensors import safe_open

    with safe_open(str(out / "model_best.safetensors"), framework="pt") as f, \
            safe_open(str(straight / "model_best.safetensors"), framework="pt") as g:
        assert all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in g.keys())


def test_k_shot_request_a_class_cannot_meet_is_warned(training, tmp_path, capsys):
    code, _, err = glip(capsys, *_finetune(training, tmp_path / "run", "--lr", "0.001", "--shots", "5",
                                           "--epochs", "1"))
    assert code == 0, err
    assert "warning: --shots 5: fewer than 5 training images show 'red' (2), 'blue' (2)" in err


def test_pretrain_resume_restarts_a_run_killed_before_its_first_checkpoint(tmp_path, capsys):
    from safetensors import safe_open

    from glipcli.checkpoint import save_safetensors
    from test_pretrain import _tiny_model

    init = tmp_path / "tiny.safetensors"
    save_safetensors(_tiny_model(), init)
    assert glip(capsys, "synth-data", tmp_path / "data", "--train", "4", "--valid", "0", "--test", "0", "--size",
                "112-144", "--objects", "1-3", "-q")[0] == 0
    straight = tmp_path / "straight"
    args = ["--data", tmp_path / "data", "--init", init, "--steps", "2", "--batch-size", "2", "--warmup-steps", "1",
            "--no-progress"]
    assert glip(capsys, "pretrain", *args, "--output", straight)[0] == 0
    out = tmp_path / "killed"
    out.mkdir()
    for name in ("run.json", "log.jsonl"):  # what exists before the first checkpoint
        (out / name).write_bytes((straight / name).read_bytes())
    code, _, err = glip(capsys, "pretrain", *args, "--output", out)
    assert_one_line_error(code, err, "already holds a pre-training run", "--resume")
    code, _, err = glip(capsys, "pretrain", "--output", out, "--resume", "--no-progress")
    assert code == 0, err
    assert "holds no checkpoint yet" in err and "starting it afresh" in err
    with safe_open(str(out / "model.safetensors"), framework="pt") as f, \
            safe_open(str(straight / "model.safetensors"), framework="pt") as g:
        assert all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in g.keys())
