"""`glip prompt-tune`: learn a prompt offset for a dataset, everything else frozen."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from glipcli.cli import training_options as opt
from glipcli.cli.app import app
from glipcli.cli import ranges


@app.command("prompt-tune", short_help="Tune a prompt offset on frozen text features.")
def prompt_tune(
    output: opt.Output = None,
    data: opt.DataDir = None,
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
    shots: opt.Shots = None,
    seed: opt.Seed = None,
    val_shots: opt.ValShots = None,
    epochs: opt.Epochs = None,
    copies: opt.Copies = None,
    batch_size: opt.BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(callback=ranges.learning_rate,
                                                help="Learning rate of the offset. (default: 0.05)",
                                                rich_help_panel=opt.SCHEDULE)] = None,
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
    """Prompt tuning (official language_prompt_v2): a per-token offset on the frozen text features.

    Writes OUTPUT/adapter_best.safetensors (< 1 MB for GLIP-T): the offset, the exact caption it
    belongs to and the base model's identity.
    """
    output = opt.run_folder("prompt-tune", output, data, train_ann, resume)
    options = dict(shots=shots, seed=seed, val_shots=val_shots, epochs=epochs, copies=copies,
                   batch_size=batch_size, lr=lr, weight_decay=weight_decay, lr_patience=lr_patience,
                   stop_patience=patience, eval_batch_size=eval_batch_size, mixed_precision=mixed_precision,
                   num_workers=num_workers)
    opt.run("prompt", data=data, train_ann=train_ann, train_images=train_images, val_ann=val_ann,
            val_images=val_images, test_ann=test_ann, test_images=test_images, prompt_file=prompt_file,
            model=model, config=config, weights=weights, output=output, resume=resume, cpu=cpu,
            progress=progress, options=options)
