"""Command-line options shared by `glip finetune` and `glip prompt-tune`, and running them.

Every training setting defaults to None on the command line: a new run then takes the official
default, a resumed run its own stored value (an explicit value must agree with it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from glipcli.cli.app import stderr
from glipcli.cli import ranges
from glipcli.errors import GlipError

DATA = "Data"
MODEL = "Model"
SCHEDULE = "Schedule"
RUN = "Run"

DataDir = Annotated[Optional[Path], typer.Option(
    "--data", help="Dataset: a Roboflow export (DIR/{train,valid,test}/_annotations.coco.json), an official ODinW "
                   "dataset folder, or an ODinW dataset name (e.g. EgoHands) under $GLIP_DATA_ROOT (default: DATASET).",
    rich_help_panel=DATA)]
TrainAnn = Annotated[Optional[Path], typer.Option(help="Training annotations (COCO JSON).", rich_help_panel=DATA)]
TrainImages = Annotated[Optional[Path], typer.Option(help="Training images folder (default: beside the JSON).",
                                                     rich_help_panel=DATA)]
ValAnn = Annotated[Optional[Path], typer.Option(help="Validation annotations (early stopping, best model).",
                                                rich_help_panel=DATA)]
ValImages = Annotated[Optional[Path], typer.Option(help="Validation images folder.", rich_help_panel=DATA)]
TestAnn = Annotated[Optional[Path], typer.Option(help="Test annotations (evaluated once, at the end).",
                                                 rich_help_panel=DATA)]
TestImages = Annotated[Optional[Path], typer.Option(help="Test images folder.", rich_help_panel=DATA)]
PromptFile = Annotated[Optional[Path], typer.Option(
    help="Prompt YAML giving each dataset class its text/prefix/suffix (default: the category names).",
    rich_help_panel=DATA)]

ModelName = Annotated[Optional[str], typer.Option(
    "--model", help="Preset (glip-t, glip-t-a, glip-t-b, glip-t-c, glip-l, nano) or a checkpoint path.",
    rich_help_panel=MODEL)]
ConfigFile = Annotated[Optional[Path], typer.Option(help="An official GLIP YACS config (.yaml).",
                                                    rich_help_panel=MODEL)]
Weights = Annotated[Optional[Path], typer.Option(help="Starting weights: official .pth or glip .safetensors.",
                                                 rich_help_panel=MODEL)]

Shots = Annotated[Optional[int], typer.Option(
    callback=ranges.count(0),
    help="K-shot subset (official protocol: >= K instances per class); 0 = all data. (default: 0)",
    rich_help_panel=SCHEDULE)]
Seed = Annotated[Optional[int], typer.Option(callback=ranges.seed,
                                             help="Seed of the few-shot subset, order and augmentation. (default: 3)",
                                             rich_help_panel=SCHEDULE)]
ValShots = Annotated[Optional[int], typer.Option(
    callback=ranges.count(0),
    help="K-shot validation subset, as the official few-shot runs (default: --shots; 0 = all).",
    rich_help_panel=SCHEDULE)]
Epochs = Annotated[Optional[int], typer.Option(
    callback=ranges.count(1),
    help="Epoch cap (default: official 200; early stopping usually ends sooner).", rich_help_panel=SCHEDULE)]
Copies = Annotated[Optional[int], typer.Option(
    callback=ranges.count(1),
    help="Passes over the training images per epoch (official: 8/4/2/1 for 1/3/5/10 shots, 1 for all).",
    rich_help_panel=SCHEDULE)]
BatchSize = Annotated[Optional[int], typer.Option(callback=ranges.count(1),
                                                  help="Images per step, over all processes. (default: 4)",
                                                  rich_help_panel=SCHEDULE)]
WeightDecay = Annotated[Optional[float], typer.Option(callback=ranges.non_negative,
                                                      help="AdamW weight decay.", rich_help_panel=SCHEDULE)]
LrPatience = Annotated[Optional[int], typer.Option(
    callback=ranges.count(0),
    help="Evaluations without a better val AP before the lr drops x0.1 (official 3; 2 with all data).",
    rich_help_panel=SCHEDULE)]
Patience = Annotated[Optional[int], typer.Option(
    callback=ranges.count(1), help="Evaluations without a better val AP before stopping (official 8; 4 with all data).",
    rich_help_panel=SCHEDULE)]
Freeze = Annotated[Optional[list[str]], typer.Option(
    "--freeze", metavar="PART",
    help="Freeze a part of the model in full fine-tuning: backbone (the image encoder, Swin + FPN), language, "
         "fusion (the X-MHA layers of the head), head (the rest of the head); repeat the option or separate parts "
         "by commas. (default: none, official)", rich_help_panel=SCHEDULE)]
BackboneLrFactor = Annotated[Optional[float], typer.Option(
    callback=ranges.learning_rate_factor,
    help="Learning rate of the image encoder (Swin + FPN) = base lr x this. (default: 1, official)",
    rich_help_panel=SCHEDULE)]
FusionLrFactor = Annotated[Optional[float], typer.Option(
    callback=ranges.learning_rate_factor,
    help="Learning rate of the fusion (X-MHA) layers = base lr x this. (default: 1, official)",
    rich_help_panel=SCHEDULE)]
HeadLrFactor = Annotated[Optional[float], typer.Option(
    callback=ranges.learning_rate_factor,
    help="Learning rate of the rest of the head = base lr x this. (default: 1, official)",
    rich_help_panel=SCHEDULE)]
EvalBatchSize = Annotated[Optional[int], typer.Option(callback=ranges.count(1),
                                                      help="Images per evaluation batch. (default: 4)",
                                                      rich_help_panel=SCHEDULE)]

Output = Annotated[Optional[Path], typer.Option(
    help="Run folder: checkpoints, best model, metrics.json, log.jsonl. (default: runs/<command>/<data name>, "
         "then -2, -3 ...; with --resume the latest of those)", rich_help_panel=RUN)]
Resume = Annotated[bool, typer.Option(help="Continue the run in --output (default: the latest run on --data) exactly "
                                           "where it stopped.", rich_help_panel=RUN)]
MixedPrecision = Annotated[Optional[str], typer.Option(help="no, bf16 or fp16 (via accelerate). (default: no)",
                                                       rich_help_panel=RUN)]
Cpu = Annotated[bool, typer.Option(help="Train on the CPU even if a GPU is available.", rich_help_panel=RUN)]
NumWorkers = Annotated[Optional[int], typer.Option(callback=ranges.count(0),
                                                   help="Data-loading worker processes. (default: 0)",
                                                   rich_help_panel=RUN)]
ShowProgress = Annotated[bool, typer.Option(help="Show the progress bar (stderr).", rich_help_panel=RUN)]


def run_folder(command: str, output: Path | None, data: Path | None, train_ann: Path | None, resume: bool) -> Path:
    """`--output`, else the default run folder of `command` for this data (see `default_run_folder`)."""
    if output is not None:
        return output
    from glipcli.engine.run_folders import data_name

    given = data is not None or train_ann is not None
    if not given and not resume:
        raise GlipError("no training data: pass --data (a dataset folder or an ODinW dataset name) or --train-ann FILE")
    return default_run_folder(command, data_name(data, train_ann), resume, any_data=resume and not given)


def default_run_folder(command: str, name: str, resume: bool, any_data: bool = False) -> Path:
    """runs/<command>/<name>, -2, -3 ... (the first free one), printed before training starts; with
    `resume` the latest run among those (among all of `command`'s runs with `any_data`)."""
    from glipcli.engine.run_folders import latest_run_folder, new_run_folder

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would pick its own free folder
        raise GlipError("a multi-process launch needs --output RUN_DIR (the same folder for every process)")
    if resume:
        folder = latest_run_folder(command, None if any_data else name)
        stderr.print(f"resuming the run in {folder}", highlight=False, markup=False, soft_wrap=True)
    else:
        folder = new_run_folder(command, name)
        stderr.print(f"run folder: {folder}", highlight=False, markup=False, soft_wrap=True)
    return folder


def run(task: str, *, data, train_ann, train_images, val_ann, val_images, test_ann, test_images, prompt_file,
        model, config, weights, output, resume, cpu, progress, options: dict[str, Any]) -> None:
    """Build the request and train; a Ctrl-C ends with the message of the trainer (exit 130)."""
    # deferred import: keeps `glip --help` fast
    from glipcli.engine.runs import RunRequest, run_training

    request = RunRequest(task=task, output=output, data=data, train_ann=train_ann, train_images=train_images,
                         val_ann=val_ann, val_images=val_images, test_ann=test_ann, test_images=test_images,
                         prompt_file=prompt_file, model=model, config=config, weights=weights,
                         options=options, resume=resume, cpu=cpu, progress=progress)
    result = run_training(request, console=stderr)
    if not result.main_process:
        return
    best = result.metrics.get("best") or {}
    val = (best.get("val") or {}) if isinstance(best, dict) else {}
    test = result.metrics.get("test") or {}
    summary = [f"best epoch {result.metrics.get('best_epoch')}"]
    if val:
        summary.append(f"val AP {val.get('AP', float('nan')):.4f}")
    if test:
        summary.append(f"test AP {test['metrics'].get('AP', float('nan')):.4f}")
    stderr.print(f"done: {', '.join(summary)}; {result.best_path}", highlight=False, markup=False, soft_wrap=True)
