"""`glip export`: a prompt (with a fine-tuned checkpoint or a prompt-tuning adapter) as one ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glipcli.cli import ranges
from glipcli.cli.app import app, stderr
from glipcli.cli.common import (ConfigOpt, ModelOpt, OverwriteOpt, QuietOpt, WeightsOpt, adapter_and_spec, apply_adapter,
                                load_predictor, model_file)
from glipcli.errors import GlipError


@app.command(short_help="Export a prompt as a standalone ONNX detector.")
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The .onnx file to write.")],
    prompt: Annotated[Optional[list[str]], typer.Option(
        "--prompt", "-p", help='Class names: "pothole. crack." (repeatable).')] = None,
    classes_file: Annotated[Optional[Path], typer.Option(help="Class names, one per line.")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option(
        help="A YAML prompt file (its thresholds and suppression phrases are exported too).")] = None,
    adapter: Annotated[Optional[Path], typer.Option(
        help="A prompt-tuning adapter from `glip prompt-tune`: its tuned text features are baked in "
             "(its own prompt is used when none is given).")] = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    weights: WeightsOpt = None,
    format: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    opset: Annotated[int, typer.Option(callback=ranges.count(1), help="ONNX opset: 16, 17 or 18.")] = 17,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a standalone ONNX detector for a fixed prompt (text features, adapter and post-processing baked in).

    Input size: any image size and batch (dynamic; no fixed size, no letterboxing).

    Inputs: images [B, 3, H, W] float32 preprocessed as `glip detect` does (docs/export.md), image_sizes [B, 2],
    original_sizes [B, 2].

    Outputs: boxes [N, 4] in input-image pixels, scores [N], phrases [N], batch_index [N].

    Run it with `glip detect --model FILE.onnx IMAGES` or with onnxruntime alone (examples/onnx_infer.py).
    """
    # deferred import: keeps `glip --help` fast
    from glipcli.export.onnx_export import check_opset, check_output

    if format.lower() != "onnx":
        raise GlipError(f"unknown export format {format!r}; the only one is onnx")
    check_opset(opset)
    check_output(output, overwrite, inputs=[weights, config, adapter, prompt_file, classes_file, model_file(model)])
    tuned, spec = adapter_and_spec(adapter, prompt, classes_file, prompt_file)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise GlipError("glip export needs the onnx package: pip install 'glipcli[onnx]'") from None

    # deferred import: keeps `glip --help` fast
    from glipcli.export.onnx_export import export_onnx

    predictor = load_predictor(model, weights, config, "cpu", "float32")
    if tuned is not None:
        apply_adapter(predictor, tuned, spec, None, str(adapter))
    if not quiet:
        stderr.print(f"exporting {len(spec.names)} classes to {output} ...", highlight=False)
    meta = export_onnx(predictor, spec, output, opset=opset, overwrite=overwrite, model_name=model or "",
                       adapter=str(adapter.name) if adapter is not None else None)
    if not quiet:
        stderr.print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB; classes: {', '.join(meta.classes)})",
                     highlight=False)
