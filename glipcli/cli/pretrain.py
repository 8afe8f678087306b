"""`glip pretrain`: pre-train a GLIP (default: the nano preset) on detection + grounding data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from glipcli.cli.app import app, stderr
from glipcli.cli import ranges

DATA, MODEL, LENGTH, RECIPE, RUN = "Data", "Model", "Length", "Recipe", "Run"


@app.command(short_help="Pre-train GLIP (default: nano on the synthetic world).")
def pretrain(
    output: Annotated[Optional[Path], typer.Option(
        help="Run folder: run.json, log.jsonl, checkpoints/, model.safetensors. (default: runs/pretrain/<data name, "
             "or world>, then -2, -3 ...; with --resume the latest of those)", rich_help_panel=RUN)] = None,
    data: Annotated[Optional[Path], typer.Option(
        help="A `glip synth-data` folder (train/_annotations.coco.json + train/_grounding.coco.json) or any COCO "
             "detection layout. Default: the synthetic world is rendered on the fly from --seed.",
        rich_help_panel=DATA)] = None,
    world_images: Annotated[Optional[int], typer.Option(
        callback=ranges.count(1),
        help="Without --data: scenes in the world's pre-training stream (an epoch). (default: 100000)",
        rich_help_panel=DATA)] = None,
    world_edition: Annotated[Optional[int], typer.Option(
        callback=ranges.count(1, 2),
        help="Without --data: the world's edition, 1 (the shipped nano's: 10 shapes) or 2 (18 shapes, "
             "clutter). (default: 2)",
        rich_help_panel=DATA)] = None,
    preset: Annotated[Optional[str], typer.Option(
        help="Architecture to pre-train from scratch, with the packaged all-MiniLM-L6-v2 text encoder. "
             "(default: nano)", rich_help_panel=MODEL)] = None,
    init: Annotated[Optional[Path], typer.Option(
        help="Start from these weights instead (a glip .safetensors: its architecture comes with it).",
        rich_help_panel=MODEL)] = None,
    seed: Annotated[Optional[int], typer.Option(callback=ranges.seed,
                                                help="Seed of the initialisation, the world, the sample order and "
                                                     "every augmentation. (default: 0)", rich_help_panel=RUN)] = None,
    steps: Annotated[Optional[int], typer.Option(callback=ranges.count(1),
                                                 help="Optimiser steps.", rich_help_panel=LENGTH)] = None,
    epochs: Annotated[Optional[int], typer.Option(callback=ranges.count(1),
                                                  help="Passes over the data.", rich_help_panel=LENGTH)] = None,
    minutes: Annotated[Optional[float], typer.Option(
        callback=ranges.positive,
        help="Wall-clock budget: the run stops cleanly before it and saves. Alone, the schedule's length is set "
             "from the step time measured over the first steps.", rich_help_panel=LENGTH)] = None,
    schedule_steps: Annotated[Optional[int], typer.Option(
        callback=ranges.count(1),
        help="Length of the learning-rate schedule in steps when it differs from --steps (replays a "
             "budgeted run step for step: its export records '--steps N --schedule-steps H').",
        rich_help_panel=LENGTH)] = None,
    batch_size: Annotated[Optional[int], typer.Option(callback=ranges.count(1),
                                                      help="Images per step, over all processes. (default: 8)",
                                                      rich_help_panel=RECIPE)] = None,
    lr: Annotated[Optional[float], typer.Option(callback=ranges.learning_rate,
                                                help="Peak AdamW learning rate. (default: 4e-4)",
                                                rich_help_panel=RECIPE)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(callback=ranges.non_negative,
                                                          help="AdamW weight decay. (default: 0.05)",
                                                          rich_help_panel=RECIPE)] = None,
    schedule: Annotated[Optional[str], typer.Option(
        help="cosine (to 1% of the peak) or step (x0.1 at 67% and 89%, official). (default: cosine)",
        rich_help_panel=RECIPE)] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(callback=ranges.count(0),
                                                        help="Linear warm-up steps. (default: 100)",
                                                        rich_help_panel=RECIPE)] = None,
    grounding_ratio: Annotated[Optional[float], typer.Option(
        callback=ranges.fraction,
        help="Share of samples trained with a grounding caption (the others: a detection prompt). (default: 0.5)",
        rich_help_panel=RECIPE)] = None,
    max_labels: Annotated[Optional[int], typer.Option(
        callback=ranges.count(1),
        help="Category names in a detection prompt at most: the positives plus sampled negatives. (default: 12)",
        rich_help_panel=RECIPE)] = None,
    hard_negatives: Annotated[Optional[float], typer.Option(
        callback=ranges.fraction,
        help="Share of the negatives drawn among categories sharing a word with a positive. (default: 0.5)",
        rich_help_panel=RECIPE)] = None,
    attribute_labels: Annotated[Optional[float], typer.Option(
        callback=ranges.fraction,
        help="Share of detection prompts naming the boxes by one attribute ('circle. square.' or 'red. blue.') "
             "instead of the full name, where the data has such labels (the synthetic world). (default: 0.25)",
        rich_help_panel=RECIPE)] = None,
    augment: Annotated[Optional[bool], typer.Option(
        "--augment/--no-augment", help="Multi-scale resize + horizontal flip. (default: on)",
        rich_help_panel=RECIPE)] = None,
    dropout: Annotated[Optional[bool], typer.Option(
        "--dropout/--no-dropout", help="Keep the architecture's dropout / DropPath rates (official) or train "
                                       "without them (the world never repeats a sample). (default: off)",
        rich_help_panel=RECIPE)] = None,
    checkpoint_minutes: Annotated[Optional[float], typer.Option(
        callback=ranges.non_negative,
        help="Minutes between checkpoints (0: only at the end). (default: 10)", rich_help_panel=RUN)] = None,
    log_every: Annotated[Optional[int], typer.Option(callback=ranges.count(1), help="Steps per log line. (default: 10)",
                                                     rich_help_panel=RUN)] = None,
    text_cache: Annotated[Optional[int], typer.Option(
        callback=ranges.count(0),
        help="Captions whose frozen text features are kept. (default: 1024)", rich_help_panel=RUN)] = None,
    num_workers: Annotated[Optional[int], typer.Option(callback=ranges.count(0),
                                                       help="Data-loading worker processes. (default: 0)",
                                                       rich_help_panel=RUN)] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, callback=ranges.count(1),
                                                          help="CPU threads for torch (default: torch's).",
                                                   rich_help_panel=RUN)] = None,
    mixed_precision: Annotated[Optional[str], typer.Option(help="no, bf16 or fp16 (via accelerate). (default: no)",
                                                           rich_help_panel=RUN)] = None,
    cpu: Annotated[bool, typer.Option(help="Train on the CPU even if a GPU is available.", rich_help_panel=RUN)] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output exactly where it stopped (a finished "
                                              "run is only exported).", rich_help_panel=RUN)] = False,
    export: Annotated[Optional[Path], typer.Option(
        help="When the run has finished, also write the shippable weights here: everything but the text encoder, "
             "float16 (e.g. glipcli/assets/glip_nano.safetensors, which `--model nano` loads).",
        rich_help_panel=RUN)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --export file.", rich_help_panel=RUN)] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar (stderr).", rich_help_panel=RUN)] = True,
) -> None:
    """Pre-train GLIP on detection + grounding data (default: nano on the synthetic world), resumable.

    Multi-GPU: accelerate launch -m glipcli.cli.main pretrain ...
    """
    import torch

    # deferred import: keeps `glip --help` fast
    from glipcli.nano.pretrain_runs import PretrainRequest, run_pretraining

    output = _run_folder(output, data, resume)
    if threads is not None:
        torch.set_num_threads(threads)
    options: dict[str, Any] = dict(
        seed=seed, steps=steps, epochs=epochs, minutes=minutes, schedule_steps=schedule_steps,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps,
        grounding_ratio=grounding_ratio, max_labels=max_labels, hard_negatives=hard_negatives,
        attribute_labels=attribute_labels, augment=augment, dropout=dropout, mixed_precision=mixed_precision,
        checkpoint_minutes=checkpoint_minutes, log_every=log_every, text_cache=text_cache, num_workers=num_workers)
    request = PretrainRequest(output=output, data=data, world_images=world_images, world_edition=world_edition,
                              preset=preset, init=init,
                              options=options, resume=resume, export=export, overwrite=overwrite, cpu=cpu,
                              progress=progress)
    result = run_pretraining(request, console=stderr)
    if result.exported is not None:
        path = result.exported
        stderr.print(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB, float16, without the text encoder)",
                     highlight=False, markup=False, soft_wrap=True)


def _run_folder(output: Path | None, data: Path | None, resume: bool) -> Path:
    """--output, else runs/pretrain/<data folder name, or world> (-2, -3 ...); with --resume the
    latest run there."""
    if output is not None:
        return output
    # deferred import: keeps `glip --help` fast
    from glipcli.cli.training_options import default_run_folder
    from glipcli.engine.run_folders import run_name

    name = run_name(data.resolve().name) if data is not None else "world"
    return default_run_folder("pretrain", name, resume, any_data=resume and data is None)

