"""`glip finetune`: full fine-tuning or linear probing on a COCO detection dataset."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from glipcli.cli import training_options as opt
from glipcli.cli.app import app
from glipcli.errors import GlipError
from glipcli.cli import ranges

MODES = ("full", "linear-probe")


@app.command(short_help="Fine-tune GLIP on a COCO detection dataset.")
def finetune(
    output: opt.Output = None,
    data: opt.DataDir = None,
    download: Annotated[bool, typer.Option(
        "--download", help="When --data names an ODinW dataset (e.g. EgoHands_generic) missing under the data root "
                           "($GLIP_DATA_ROOT, else ./DATASET), download it first.", rich_help_panel=opt.DATA)] = False,
    train_ann: opt.TrainAnn = None,
    train_images: opt.TrainImages = None,
    val_ann: opt.ValAnn = None,
    val_images: opt.ValImages = None,
    test_ann: opt.TestAnn = None,
    test_images: opt.TestImages = None,
    prompt_file: opt.PromptFile = None,
    model: opt.ModelName = None,
    config: opt.ConfigFile = None,
    weights: opt.Weights = None,
    mode: Annotated[Optional[str], typer.Option(
        help="full (official full-model tuning) or linear-probe (only the head's prediction layers). "
             "(default: full)", rich_help_panel=opt.SCHEDULE)] = None,
    shots: opt.Shots = None,
    seed: opt.Seed = None,
    val_shots: opt.ValShots = None,
    epochs: opt.Epochs = None,
    copies: opt.Copies = None,
    batch_size: opt.BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(callback=ranges.learning_rate,
                                                help="Base learning rate. (default: 1e-4)",
                                                rich_help_panel=opt.SCHEDULE)] = None,
    language_lr: Annotated[Optional[float], typer.Option(callback=ranges.language_learning_rate,
                                                         help="Language-backbone learning rate; 0 freezes it, "
                                                              "as --freeze language. (default: 1e-5)",
                                                         rich_help_panel=opt.SCHEDULE)] = None,
    freeze: opt.Freeze = None,
    backbone_lr_factor: opt.BackboneLrFactor = None,
    fusion_lr_factor: opt.FusionLrFactor = None,
    head_lr_factor: opt.HeadLrFactor = None,
    weight_decay: opt.WeightDecay = None,
    lr_patience: opt.LrPatience = None,
    patience: opt.Patience = None,
    eval_batch_size: opt.EvalBatchSize = None,
    resume: opt.Resume = False,
    mixed_precision: opt.MixedPrecision = None,
    cpu: opt.Cpu = False,
    num_workers: opt.NumWorkers = None,
    progress: opt.ShowProgress = True,
) -> None:
    """Fine-tune GLIP on a COCO detection dataset (official few-shot protocol, early stopping on val AP).

    Multi-GPU: accelerate launch -m glipcli.cli.main finetune ...
    """
    if mode is not None and mode not in MODES:
        raise GlipError(f"--mode must be one of {', '.join(MODES)} (got {mode!r})")
    task = mode or "full"
    if freeze is not None:
        # deferred import: keeps `glip --help` fast
        from glipcli.engine.train_config import parse_parts

        freeze = parse_parts(freeze)
    if download and data is None:
        raise GlipError("--download needs --data NAME, an ODinW dataset name (e.g. --data EgoHands_generic)")
    if download:
        # deferred imports: keep `glip --help` fast
        from glipcli.cli.app import stderr
        from glipcli.data.odinw.download import download_for_data

        download_for_data(data, say=None if not progress else (
            lambda text: stderr.print(text, highlight=False, markup=False, soft_wrap=True)))
    output = opt.run_folder("finetune", output, data, train_ann, resume)
    if resume and mode is None:
        task = _stored_task(output) or task
    options = dict(shots=shots, seed=seed, val_shots=val_shots, epochs=epochs, copies=copies,
                   batch_size=batch_size, lr=lr, language_lr=language_lr, weight_decay=weight_decay,
                   freeze=freeze, backbone_lr_factor=backbone_lr_factor, fusion_lr_factor=fusion_lr_factor,
                   head_lr_factor=head_lr_factor, lr_patience=lr_patience, stop_patience=patience,
                   eval_batch_size=eval_batch_size, mixed_precision=mixed_precision, num_workers=num_workers)
    opt.run(task, data=data, train_ann=train_ann, train_images=train_images, val_ann=val_ann,
            val_images=val_images, test_ann=test_ann, test_images=test_images, prompt_file=prompt_file,
            model=model, config=config, weights=weights, output=output, resume=resume, cpu=cpu,
            progress=progress, options=options)


def _stored_task(output) -> str | None:
    """The task recorded in the run folder (None when it cannot be read: `--resume` then reports
    the damaged record itself)."""
    # deferred import: keeps `glip --help` fast
    from glipcli.engine.trainer import RUN_FILE
    from glipcli.io import read_json

    try:
        run = read_json(output / RUN_FILE, "run record")
    except GlipError:
        return None
    task = run.get("task") if isinstance(run, dict) else None
    return task if task in MODES else None
