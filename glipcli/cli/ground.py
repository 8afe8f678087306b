"""`glip ground`: a caption and its phrases in, the best boxes per phrase out."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from glipcli.cli.app import app, stdout
from glipcli.cli import ranges
from glipcli.cli.common import (BatchSizeOpt, ConfigOpt, CudaGraphsOpt, DeviceOpt, DtypeOpt, ImagesArg,
                                JsonOpt, ModelOpt, OutputFiles, OverwriteOpt, QuietOpt, SaveVisOpt, StrictOpt,
                                WeightsOpt, finish, load_predictor, model_file, run_images)


@app.command(short_help="Ground a caption's phrases in each image.")
def ground(
    images: ImagesArg,
    caption: Annotated[str, typer.Argument(
        help='The caption; "[a woman] holding [a cup of coffee]" marks phrases with brackets.',
        show_default=False)],
    phrase: Annotated[Optional[list[str]], typer.Option(
        "--phrase", metavar="TEXT", help="A phrase of the caption to ground (repeatable; overlaps allowed).")] = None,
    phrase_span: Annotated[Optional[list[str]], typer.Option(
        metavar="START:END", help="A phrase given by character span START:END of the caption (brackets removed), "
             "for a phrase that occurs more than once (repeatable).")] = None,
    markup: Annotated[bool, typer.Option(help="Read [brackets] in the caption as phrase markup.")] = True,
    top_k: Annotated[int, typer.Option(min=1, callback=ranges.count(1), help="Boxes kept per phrase, best first.")] = 1,
    box_threshold: Annotated[float, typer.Option(
        callback=ranges.fraction, help="Drop boxes scoring below this (0: every phrase gets its best box).")] = 0.0,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    weights: WeightsOpt = None,
    batch_size: BatchSizeOpt = 1,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    cuda_graphs: CudaGraphsOpt = False,
    json_out: JsonOpt = None,
    save_vis: SaveVisOpt = None,
    overwrite: OverwriteOpt = False,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Ground the caption's phrases in each image (no phrase given: the whole caption)."""
    # deferred import: keeps `glip --help` fast
    from glipcli.data.sources import expand_image_args
    from glipcli.grounding import grounding_phrases, parse_span

    specs: list = list(phrase or []) + [parse_span(s) for s in (phrase_span or [])]
    grounding_phrases(caption, specs, markup=markup)  # phrase errors before the model loads
    sources = expand_image_args(images)
    outputs = OutputFiles(overwrite=overwrite, json=json_out, vis_dir=save_vis,
                          inputs=[weights, config, model_file(model)])
    outputs.plan_visualisations(sources)
    outputs.check()

    predictor = load_predictor(model, weights, config, device, dtype, cuda_graphs)
    encoded = predictor.encode_grounding(caption, specs, markup=markup)
    items = predictor.iter_ground(sources, encoded, top_k=top_k, box_threshold=box_threshold,
                                  batch_size=batch_size, skip_errors=not strict)
    outcome = run_images(items, len(sources), quiet, on_result=_vis_writer(outputs))

    if not quiet:
        for result in outcome.results:
            _print_result(result)
    if json_out is not None and not outcome.nothing_read:
        outputs.write_json(json_out, [r.to_dict() for r in outcome.results], quiet)
    finish(outcome, len(sources))


def _vis_writer(outputs: OutputFiles):
    if outputs.vis_dir is None:
        return None
    # deferred import: keeps `glip --help` fast
    from glipcli.visualize import DrawBox, render, save_image

    def write(prepared, result) -> None:
        scored = [(box.score, DrawBox(box.box_xyxy, f"{p.text} {box.score:.2f}", i))
                  for i, p in enumerate(result.phrases) for box in p.boxes]
        scored.sort(key=lambda pair: -pair[0])  # best first: drawn last, on top
        save_image(render(prepared.image, [b for _, b in scored]), outputs.vis_names[prepared.index])

    return write


def _print_result(result) -> None:
    table = Table(title=Text(f"{result.image} ({result.width}x{result.height}): {result.caption}"))
    for column in ("phrase", "span", "score", "x0", "y0", "x1", "y1"):
        table.add_column(column, justify="left" if column in ("phrase", "span") else "right")
    for p in result.phrases:
        span = f"{p.span[0]}:{p.span[1]}"
        if not p.boxes:
            table.add_row(Text(p.text), span, "-", "-", "-", "-", "-")
        for box in p.boxes:
            table.add_row(Text(p.text), span, f"{box.score:.3f}", *(f"{v:.1f}" for v in box.box_xyxy))
    stdout.print(table)
