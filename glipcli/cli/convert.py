"""`glip convert`: an official checkpoint -> a slim, safe glip .safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glipcli.cli.app import app, stderr, stdout
from glipcli.cli.common import ConfigOpt, OverwriteOpt


@app.command(short_help="Write a checkpoint as glip safetensors (weights + config).")
def convert(
    source: Annotated[Path, typer.Argument(help="Official .pth (or a glip .safetensors) checkpoint.",
                                           show_default=False)],
    target: Annotated[Path, typer.Argument(help="The .safetensors file to write.", show_default=False)],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Preset naming the architecture (default: recognised from the checkpoint).")] = None,
    config: ConfigOpt = None,
    dtype: Annotated[Optional[str], typer.Option(
        help="Store floating tensors as float16 or bfloat16 (default: float32, as trained).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the model weights only (no optimizer state, no pickle) with the config inside."""
    # deferred import: keeps `glip --help` fast
    from glipcli.convert import convert_checkpoint

    report = convert_checkpoint(source, target, model=model, config=config, dtype=dtype, overwrite=overwrite)
    stdout.print(f"wrote {report.target}: {report.tensors} tensors, architecture {report.config_name}, "
                 f"{_size(report.target_bytes)} = {report.ratio:.1%} of {report.source.name} "
                 f"({_size(report.source_bytes)})", highlight=False, markup=False, soft_wrap=True)
    if report.ratio > 1.0:
        stderr.print("note: the output is larger than the input (the input stored some tensors in "
                     "lower precision or shared storage); pass --dtype float16 to halve it",
                     highlight=False, markup=False, soft_wrap=True)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
