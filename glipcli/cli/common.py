"""What `glip detect` and `glip ground` share: model/run options, loading the predictor, the
progress bar, per-image failure reporting and the output files (checked before any work)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from glipcli.cli.app import stderr
from glipcli.errors import GlipError
from glipcli.cli import ranges

# -- options shared by detect and ground ---------------------------------------------------------
ImagesArg = Annotated[list[str], typer.Argument(
    help="Image files, folders (the images inside, sorted) or quoted glob patterns ('imgs/*.jpg').",
    metavar="IMAGE", show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Preset (glip-t, glip-t-a, glip-t-b, glip-t-c, glip-l: official weights from the "
    "Hugging Face hub unless --weights is given; nano: the small GLIP whose weights ship with glip, offline) or a "
    "checkpoint path. Default: glip-t.")]
ConfigOpt = Annotated[Optional[Path], typer.Option(help="An official GLIP YACS config (.yaml): the architecture.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="Checkpoint: official .pth or glip .safetensors.")]
BatchSizeOpt = Annotated[int, typer.Option(min=1, callback=ranges.count(1),
                                                  help="Images per forward pass (similar sizes are batched).")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda, then mps, else cpu), cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option(help="float32, float16 or bfloat16 (autocast; post-processing in float32).")]
CudaGraphsOpt = Annotated[bool, typer.Option(
    help="Replay the forward from CUDA graphs (one per batch and image size, made on first use).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write the results to this JSON file.")]
SaveVisOpt = Annotated[Optional[Path], typer.Option(help="Save each image with its boxes drawn into this folder.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace existing output files.")]
StrictOpt = Annotated[bool, typer.Option(
    help="Stop at the first unreadable image (default: skip it, report it, exit non-zero at the end).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no tables; only errors.")]


def load_predictor(model: str | None, weights: Path | None, config: Path | None, device: str, dtype: str,
                   cuda_graphs: bool = False):
    """The predictor for the CLI's model options (see `GLIPPredictor.from_pretrained`).
    Device, dtype, --cuda-graphs and the weights file (hub download included) are resolved
    before the model code is imported, so their errors come fast."""
    # deferred import: keeps `glip --help` fast
    from glipcli.device import resolve_device, resolve_dtype
    from glipcli.weights import load_model, resolve_model_source

    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype)
    if cuda_graphs and resolved_device.type != "cuda":
        raise GlipError(f"--cuda-graphs needs a CUDA device (the device is {resolved_device.type}); "
                        "use --device cuda or leave CUDA graphs off")
    source = resolve_model_source(model=model, weights=weights, config=config)
    # deferred import: keeps `glip --help` fast
    from glipcli.predictor import GLIPPredictor

    return GLIPPredictor(load_model(source), device=resolved_device, dtype=resolved_dtype, cuda_graphs=cuda_graphs)


def model_file(model: str | None) -> Path | None:
    """`--model` when it names a checkpoint file (an input no output may replace), else None."""
    if model is None:
        return None
    from glipcli.weights import looks_like_path

    return Path(model) if looks_like_path(model) else None


# -- outputs ------------------------------------------------------------------------------------
@dataclass
class OutputFiles:
    """The files a run writes, checked by one `glipcli.outputs.OutputGuard` before any work:
    resolved paths, no output equal to another or to an input (`inputs`: every file the run
    reads), regular files only, existing ones only with `overwrite`."""

    overwrite: bool
    json: Path | None = None
    coco: Path | None = None
    vis_dir: Path | None = None
    vis_names: dict[int, Path] = field(default_factory=dict)  # input index -> rendering path
    inputs: list[Path | str | None] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)

    def plan_visualisations(self, sources: Sequence[Path]) -> None:
        # deferred import: keeps `glip --help` fast
        from glipcli.visualize import output_name

        self.sources = list(sources)
        if self.vis_dir is None:
            return
        taken: set[str] = set()
        self.vis_names = {i: self.vis_dir / output_name(str(s), taken) for i, s in enumerate(sources)}

    def check(self) -> None:
        # deferred import: keeps `glip --help` fast
        from glipcli.outputs import OutputGuard

        guard = OutputGuard(overwrite=self.overwrite, inputs=[*self.inputs, *self.sources])
        guard.file(self.json, "--json")
        guard.file(self.coco, "--coco-results")
        guard.folder(self.vis_dir, "--save-vis")
        for index, path in self.vis_names.items():
            guard.file(path, "--save-vis", source=self.sources[index] if index < len(self.sources) else None)

    def write_json(self, path: Path, data: Any, quiet: bool) -> None:
        # deferred import: keeps `glip --help` fast
        from glipcli.io import write_json

        write_json(path, data, overwrite=self.overwrite)
        if not quiet:
            stderr.print(f"wrote {path}", highlight=False)


# -- running ------------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    """Results in input order (with the decoded images dropped) and the unreadable inputs."""

    results: list[Any]
    failures: list[Any]
    seconds: float

    @property
    def nothing_read(self) -> bool:
        """Every input was unreadable: no output file is written (it would hold nothing)."""
        return not self.results and bool(self.failures)


def run_images(items: Iterator, total: int, quiet: bool,
               on_result: Callable[[Any, Any], None] | None = None) -> RunOutcome:
    """Drain a predictor's `iter_predict`/`iter_ground` iterator: progress bar on stderr (only
    when it is a terminal and not quiet), one line per unreadable input as it is met (when more
    than one input), `on_result(prepared, result)` per image (e.g. to save a rendering while the
    decoded image is at hand)."""
    # deferred import: keeps `glip --help` fast
    from glipcli.data.batching import ImageFailure

    start = time.perf_counter()
    results: list[tuple[int, Any]] = []
    failures: list[ImageFailure] = []
    show = stderr.is_terminal and not quiet
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, disable=not show, transient=False) as progress:
        task = progress.add_task("images", total=total)
        for item in items:
            if isinstance(item, ImageFailure):
                failures.append(item)
                if total > 1:
                    progress.console.print(f"error: {item.error}", highlight=False, markup=False, soft_wrap=True)
            else:
                prepared, result = item
                if on_result is not None:
                    on_result(prepared, result)
                results.append((prepared.index, result))
            progress.advance(task)
    results.sort(key=lambda pair: pair[0])
    return RunOutcome([r for _, r in results], sorted(failures, key=lambda f: f.index),
                      time.perf_counter() - start)


def finish(outcome: RunOutcome, total: int) -> None:
    """Exit status for unreadable inputs: the single input's own error, or a count (the inputs
    were reported one per line as they were met)."""
    if not outcome.failures:
        return
    if total == 1:
        raise GlipError(outcome.failures[0].error)
    if outcome.nothing_read:
        raise GlipError(f"none of the {total} images could be read (listed above); nothing was written")
    raise GlipError(f"{len(outcome.failures)} of {total} images could not be read (listed above); "
                    f"the outputs hold the other {total - len(outcome.failures)}")


def adapter_and_spec(adapter: Path | None, prompts: list[str] | None, classes_file: Path | None,
                     prompt_file: Path | None):
    """(the prompt-tuning adapter or None, the prompt spec): without a prompt given, an adapter's
    own tuned prompt."""
    # deferred imports: keep `glip --help` fast
    from glipcli.engine.prompt_tuning import load_adapter
    from glipcli.prompts.prompt_file import PromptSpec, load_prompt_spec

    tuned = load_adapter(adapter) if adapter is not None else None
    if tuned is not None and prompts is None and classes_file is None and prompt_file is None:
        return tuned, PromptSpec.from_yaml_text(tuned.prompt_yaml)
    return tuned, load_prompt_spec(prompts=prompts, classes_file=classes_file, prompt_file=prompt_file)


def apply_adapter(predictor, tuned, spec, chunk_size, source: str) -> None:
    """Check that the adapter fits the model and the prompt (one caption, the tuned one), then
    attach it to the model's text encoder."""
    # deferred import: keeps `glip --help` fast
    from glipcli.prompts.chunking import plan_chunks

    tuned.check_model(predictor.model, source=source)
    plan = plan_chunks(spec, max_tokens=predictor.cfg.language.max_query_len, chunk_size=chunk_size)
    if len(plan.chunks) != 1:
        raise GlipError(f"{source} belongs to one caption; this prompt needs {len(plan.chunks)} captions")
    tuned.check_prompt(plan.chunks[0].prompt, source=source)
    tuned.attach(predictor.model, source=source)
