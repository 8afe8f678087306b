"""`glip label`: a folder of unlabelled images in, a training-ready dataset out (COCO or YOLO)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from glipcli.cli import ranges
from glipcli.cli.app import app, stderr
from glipcli.cli.common import (BatchSizeOpt, ConfigOpt, CudaGraphsOpt, DeviceOpt, DtypeOpt, ImagesArg,
                                ModelOpt, QuietOpt, StrictOpt, WeightsOpt, load_predictor)
from glipcli.errors import GlipError


@app.command()
def label(
    images: ImagesArg,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Dataset folder (created; an interrupted run in it resumes).", show_default=False)],
    prompt_file: Annotated[Optional[Path], typer.Option(
        help="YAML prompt file: the class names become the dataset's categories; texts, thresholds and "
             "suppression phrases are what the model reads.")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option(
        "--prompt", "-p", help='Class names instead of a prompt file: "person. bicycle." (repeatable).')] = None,
    classes_file: Annotated[Optional[Path], typer.Option(help="Class names, one per line.")] = None,
    format: Annotated[str, typer.Option(
        "--format", help="coco (Roboflow layout: SPLIT/_annotations.coco.json, read by `glip finetune --data`) "
                         "or yolo (images/, labels/, data.yaml).")] = "coco",
    split: Annotated[str, typer.Option(help="Split fractions over the labelled images (train, valid, test).")]
    = "train=0.8,valid=0.2",
    seed: Annotated[int, typer.Option(callback=ranges.seed, help="Seed of the split.")] = 0,
    copy: Annotated[bool, typer.Option("--copy/--link", help="Copy the images into the dataset, or link "
                                                             "(symbolic links to the originals).")] = True,
    box_threshold: Annotated[float, typer.Option(
        callback=ranges.fraction, help="Drop boxes scoring below this (a class's own threshold in the prompt file wins).")] = 0.3,
    chunk_size: Annotated[Optional[int], typer.Option(
        callback=ranges.count(1), help="At most this many classes per caption.")] = None,
    agnostic_nms: Annotated[Optional[float], typer.Option(
        callback=ranges.fraction, help="IoU above which a box is dropped for a better box of ANY class (default: classes may overlap).")]
    = None,
    min_box_size: Annotated[float, typer.Option(
        callback=ranges.non_negative, help="Drop boxes narrower or lower than this (pixels).")] = 0.0,
    max_boxes: Annotated[Optional[int], typer.Option(
        callback=ranges.count(1), help="At most this many boxes per image, best first (default: the model's cap, 100).")] = None,
    keep_empty: Annotated[bool, typer.Option(
        help="Keep images where nothing was found, as negatives (default: leave them out).")] = False,
    save_vis: Annotated[int, typer.Option(
        callback=ranges.count(0), help="Render this many of the dataset's images with their labels into OUTPUT/preview.")] = 0,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    weights: WeightsOpt = None,
    batch_size: BatchSizeOpt = 1,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    cuda_graphs: CudaGraphsOpt = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace a finished dataset in --output, or write into a folder holding other files. The "
             "journal's labels are reused when the model, prompt and thresholds are the same; otherwise the "
             "labelling starts afresh.")] = False,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Label images into a training dataset (COCO or YOLO).

    Several GPUs or machines: accelerate launch --multi_gpu --num_processes N -m glipcli.cli.main label ...
    """
    from glipcli.data.sources import expand_image_args
    from glipcli.labeling import LabelConfig, LabelFilters, label_images, parse_splits
    from glipcli.labeling.labeler import label_settings
    from glipcli.labeling.output import plan_output
    from glipcli.prompts.prompt_file import load_prompt_spec
    from glipcli.sharding import Workers

    spec = load_prompt_spec(prompts=prompt, classes_file=classes_file, prompt_file=prompt_file)
    sources = expand_image_args(images)
    settings = LabelConfig(output=output, format=format, splits=parse_splits(split), seed=seed,
                           image_mode="copy" if copy else "link", box_threshold=box_threshold, chunk_size=chunk_size,
                           filters=LabelFilters(min_box_size=min_box_size, agnostic_nms=agnostic_nms,
                                                max_boxes=max_boxes),
                           keep_empty=keep_empty, batch_size=batch_size, preview=save_vis, overwrite=overwrite,
                           skip_errors=not strict)
    identity = _model_identity(model, weights, config)
    # A refusal of the output folder comes before the model loads (which can mean a download).
    plan_output(output, label_settings(spec, settings, identity, dtype), overwrite, sources)
    workers = Workers.current(device)
    predictor = load_predictor(model, weights, config, workers.device(device), dtype, cuda_graphs)
    show = workers.is_main and not quiet
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, disable=not (show and stderr.is_terminal)) as progress:
        task = progress.add_task("labelling", total=len(workers.shard(sources, batch_size)))

        def on_image(item) -> None:
            if hasattr(item, "error"):
                progress.console.print(f"error: {item.error}", highlight=False, markup=False, soft_wrap=True)
            progress.advance(task)

        outcome = label_images(predictor, sources, spec, settings, model=identity,
                               workers=workers, on_image=on_image)
    if outcome.summary is None:
        return
    summary = outcome.summary
    if show:
        if outcome.resumed:
            stderr.print(f"{outcome.resumed} images' labels come from an earlier run's journal", highlight=False)
        splits = ", ".join(f"{name} {s['images']}" for name, s in summary.splits.items())
        classes = ", ".join(f"{c.name} {c.boxes}" for c in summary.classes)
        empty = (f"{summary.negatives} without boxes kept as negatives" if settings.keep_empty
                 else f"{summary.dropped_empty} without boxes left out")
        stderr.print(f"wrote {output} ({summary.format}): {summary.images} images ({splits}), {summary.boxes} boxes "
                     f"({classes}); {empty}", highlight=False, markup=False, soft_wrap=True)
    if outcome.failures:
        total = len(sources)
        if total == 1:
            raise GlipError(outcome.failures[0].error)
        raise GlipError(f"{len(outcome.failures)} of {total} images could not be read (listed above); "
                        f"the dataset holds the others")


def _model_identity(model: str | None, weights: Path | None, config: Path | None) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the journal: the model name, and the
    weights and config files by absolute path, size and (config) content."""
    identity: dict[str, Any] = {"model": model or ("glip-t" if weights is None else None)}
    if weights is not None:
        path = Path(weights).resolve()
        identity["weights"] = {"path": str(path), "bytes": path.stat().st_size if path.is_file() else None}
    if config is not None and Path(config).is_file():
        identity["config"] = hashlib.sha256(Path(config).read_bytes()).hexdigest()
    return identity
