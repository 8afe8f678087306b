"""`glip synth-data`: write a synthetic grounding dataset (coloured shapes) in the Roboflow/COCO layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glipcli.cli.app import app, stderr, stdout
from glipcli.errors import GlipError
from glipcli.cli import ranges


def _range(text: str, what: str) -> tuple[int, int]:
    """`"224-288"` -> (224, 288); `"256"` -> (256, 256)."""
    parts = text.split("-")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise GlipError(f"{what} {text!r} must be N or MIN-MAX, e.g. 224-288")
    return (values[0], values[-1])


@app.command("synth-data", short_help="Write a synthetic grounding dataset (COCO + captions).")
def synth_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (train/, valid/, test/, prompts/).",
                                            show_default=False)],
    seed: Annotated[int, typer.Option(callback=ranges.seed,
                                      help="World seed: the same seed and options give the same dataset.")] = 0,
    train: Annotated[int, typer.Option(min=0, callback=ranges.count(0), help="Images in train/.")] = 1000,
    valid: Annotated[int, typer.Option(min=0, callback=ranges.count(0), help="Images in valid/.")] = 100,
    test: Annotated[int, typer.Option(min=0, callback=ranges.count(0), help="Images in test/.")] = 100,
    task: Annotated[str, typer.Option(
        help="pretrain (held-out combinations and shape never drawn), unseen-combos (every image holds "
             "held-out combinations, the only categories), novel-shape (the held-out shape, the only "
             "category) or all.")] = "pretrain",
    held_out: Annotated[Optional[list[str]], typer.Option(
        "--held-out", metavar="TEXT",
        help="A held-out colour-shape combination, e.g. 'purple star' (repeatable; default: "
             "purple star, orange circle, green triangle, blue ring, yellow cross, red hexagon).",
        show_default=False)] = None,
    held_out_shape: Annotated[str, typer.Option(help="The shape never drawn in pre-training ('none': none).")
                              ] = "arrow",
    categories: Annotated[Optional[str], typer.Option(
        help="Category kind: colour-shape ('red circle'), shape ('circle') or colour ('red'). "
             "Default: the task's.", show_default=False)] = None,
    classes: Annotated[Optional[list[str]], typer.Option(
        "--class", metavar="NAME", help="Restrict the categories to these names (repeatable); other objects are drawn "
                        "unannotated.", show_default=False)] = None,
    captions: Annotated[int, typer.Option(min=0, callback=ranges.count(0), help="Grounding captions per image.")] = 2,
    size: Annotated[str, typer.Option(help="Image width and height range in pixels: N or MIN-MAX.")] = "224-288",
    objects: Annotated[str, typer.Option(help="Objects per image: N or MIN-MAX.")] = "2-6",
    image_format: Annotated[str, typer.Option("--format", help="jpg or png.")] = "jpg",
    overwrite: Annotated[bool, typer.Option(help="Replace OUT_DIR if it holds a synthetic dataset.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Write a procedural grounding dataset: COCO detection + captions with phrase spans."""
    # deferred import: keeps `glip --help` fast
    from glipcli.nano.synthetic import (DEFAULT_HELD_OUT_COMBOS, CategoryScheme, HeldOut, WorldConfig,
                                        parse_combo, task_categories, write_coco_dataset)

    combos = [parse_combo(c) for c in held_out] if held_out else list(DEFAULT_HELD_OUT_COMBOS)
    shape = None if held_out_shape.strip().lower() == "none" else held_out_shape.strip().lower()
    holdout = HeldOut(combos=frozenset(combos), shape=shape)
    config = WorldConfig(size_range=_range(size, "--size"), objects_range=_range(objects, "--objects"))
    scheme = None
    if categories is not None or classes:
        kind = categories or task_categories(task, holdout).kind
        scheme = CategoryScheme(kind, tuple(classes) if classes else None)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("synth-data"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr, disable=quiet, transient=True) as bar:
        job = bar.add_task("images", total=train + valid + test)
        report = write_coco_dataset(
            out_dir, train, valid, test, seed=seed, task=task, held_out=holdout, categories=scheme,
            config=config, captions_per_image=captions, image_format=image_format.lower(),
            overwrite=overwrite, progress=lambda done, total: bar.update(job, completed=done))
    parts = ", ".join(f"{s.name} {s.images} images / {s.boxes} boxes / {s.captions} captions"
                      for s in report.splits)
    shown = ", ".join(report.categories[:6]) + (f", ... ({len(report.categories)} in all)"
                                                if len(report.categories) > 6 else "")
    stdout.print(f"wrote {report.root} (task {report.task}, seed {report.seed}): {parts}; categories: {shown}",
                 highlight=False, markup=False, soft_wrap=True)
