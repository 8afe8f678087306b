"""`glip detect`: class names in, boxes out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from glipcli.cli.app import app, stderr, stdout
from glipcli.errors import GlipError


@app.command()
def detect(
    images: Annotated[list[Path], typer.Argument(help="Image files to run on.")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p",
                                              help='Class names: "person. bicycle." (repeatable).')],
    model: Annotated[Optional[str], typer.Option(help="Preset: glip-t, glip-t-a, glip-t-b, glip-t-c, glip-l.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="An official GLIP YACS config (.yaml).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint: official .pth or glip .safetensors.")] = None,
    box_threshold: Annotated[float, typer.Option(help="Drop detections scoring below this.")] = 0.3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write results to this JSON file.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --json file.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    max_rows: Annotated[int, typer.Option(help="Detections shown per image on the terminal.")] = 10,
) -> None:
    """Detect the prompt's classes in each image."""
    from glipcli.io import check_writable, write_json
    from glipcli.predictor import GLIPPredictor, parse_class_prompt

    class_names = parse_class_prompt(prompt)
    if json_out is not None:
        check_writable(json_out, overwrite)
    for image in images:
        if not image.is_file():
            raise GlipError(f"{image}: no such image file")
    if weights is None:
        raise GlipError("no weights given: pass --weights PATH (an official GLIP .pth or a glip .safetensors file)")
    if model is None and config is None and not str(weights).endswith(".safetensors"):
        model = "glip-t"
    predictor = GLIPPredictor.from_pretrained(model=model, weights=weights, config=config, device=device)
    results = predictor.predict(images, class_names, box_threshold=box_threshold)
    for result in results:
        _print_result(result, max_rows)
    if json_out is not None:
        write_json(json_out, [r.to_dict() for r in results], overwrite=overwrite)
        stderr.print(f"wrote {json_out}")


def _print_result(result, max_rows: int) -> None:
    table = Table(title=f"{result.image} ({result.width}x{result.height}): {len(result.detections)} detections")
    for column in ("label", "score", "x0", "y0", "x1", "y1"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for det in result.detections[:max_rows]:
        table.add_row(det.label, f"{det.score:.3f}", *(f"{v:.1f}" for v in det.box_xyxy))
    stdout.print(table)
