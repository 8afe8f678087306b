"""`glip detect`: class names in, boxes out (JSON, COCO results, renderings, a terminal table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from glipcli.cli.app import app, stdout
from glipcli.cli.common import (BatchSizeOpt, ConfigOpt, CudaGraphsOpt, DeviceOpt, DtypeOpt, ImagesArg,
                                JsonOpt, ModelOpt, OutputFiles, OverwriteOpt, QuietOpt, RunOutcome,
                                SaveVisOpt, StrictOpt, WeightsOpt, adapter_and_spec, apply_adapter, finish,
                                load_predictor, model_file, run_images)
from glipcli.errors import GlipError
from glipcli.cli import ranges

MAX_IMAGE_TABLES = 10  # more images than this: one summary table instead of one table each


@app.command()
def detect(
    images: ImagesArg,
    prompt: Annotated[Optional[list[str]], typer.Option(
        "--prompt", "-p", metavar="TEXT", help='Class names: "person. bicycle." (repeatable).')] = None,
    classes_file: Annotated[Optional[Path], typer.Option(help="Class names, one per line.")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option(
        help="A YAML prompt file (names, grounded texts, prefixes/suffixes, thresholds, suppression).")] = None,
    chunk_size: Annotated[Optional[int], typer.Option(
        callback=ranges.count(1),
        help="At most this many classes per caption (long lists are split automatically anyway).")] = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    weights: WeightsOpt = None,
    box_threshold: Annotated[float, typer.Option(callback=ranges.fraction,
                                                 help="Drop detections scoring below this.")] = 0.3,
    batch_size: BatchSizeOpt = 1,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    cuda_graphs: CudaGraphsOpt = False,
    json_out: JsonOpt = None,
    coco_results: Annotated[Optional[Path], typer.Option(
        help="Write pycocotools results (image_id, category_id, bbox xywh, score); needs --coco-gt.")] = None,
    coco_gt: Annotated[Optional[Path], typer.Option(
        help="COCO ground truth giving the image ids (by file_name) and category ids (by name).")] = None,
    save_vis: SaveVisOpt = None,
    overwrite: OverwriteOpt = False,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
    max_rows: Annotated[int, typer.Option(callback=ranges.count(0),
                                          help="Detections shown per image on the terminal.")] = 10,
    adapter: Annotated[Optional[Path], typer.Option(
        help="A prompt-tuning adapter from `glip prompt-tune`; its tuned prompt is used when no "
             "prompt is given, and any other prompt is refused.")] = None,
) -> None:
    """Detect the prompt's classes in each image.

    Several GPUs or machines: accelerate launch --multi_gpu --num_processes N -m glipcli.cli.main detect ...
    """
    # deferred import: keeps `glip --help` fast
    from glipcli.data.sources import expand_image_args
    from glipcli.prompts.prompt_file import load_prompt_spec

    # deferred imports: keep `glip --help` fast
    from glipcli.export.runtime import is_onnx_model

    tuned = onnx_model = None
    if is_onnx_model(model):
        # An exported file (`glip export`): its prompt is baked in; a prompt given must be that one.
        from glipcli.export.runtime import OnnxDetector

        if adapter is not None or weights is not None or config is not None:
            raise GlipError("--adapter, --weights and --config apply to PyTorch models; an exported .onnx file "
                            "has them baked in")
        if cuda_graphs:
            raise GlipError("--cuda-graphs applies to PyTorch models, not to an exported .onnx file")
        onnx_model = OnnxDetector.load(model, device="cpu" if device == "auto" else device)
        given = prompt or classes_file or prompt_file
        spec = onnx_model.check_spec(load_prompt_spec(prompts=prompt, classes_file=classes_file,
                                                      prompt_file=prompt_file) if given else None)
    else:
        tuned, spec = adapter_and_spec(adapter, prompt, classes_file, prompt_file)
    sources = expand_image_args(images)
    if (coco_results is None) != (coco_gt is None):
        raise GlipError("--coco-results and --coco-gt go together: the ground truth gives the ids")
    outputs = OutputFiles(overwrite=overwrite, json=json_out, coco=coco_results, vis_dir=save_vis,
                          inputs=[coco_gt, prompt_file, classes_file, weights, config, adapter, model_file(model)])
    outputs.plan_visualisations(sources)
    outputs.check()
    coco_index = None
    if coco_gt is not None:
        # deferred import: keeps `glip --help` fast
        from glipcli.coco_results import CocoIndex

        coco_index = CocoIndex.load(coco_gt)
        coco_index.check(sources, spec.names)

    # deferred imports: keep `glip --help` fast
    from glipcli.chunked_detection import iter_detect_with_spec
    from glipcli.sharding import Workers

    workers = Workers.current(device)  # under `accelerate launch`: this process's share of the images
    shard = workers.shard(sources, batch_size)
    shard_sources = [sources[i] for i in shard]
    if onnx_model is not None:
        items = onnx_model.iter_predict(shard_sources, spec, box_threshold=box_threshold, batch_size=batch_size,
                                        skip_errors=not strict)
    else:
        predictor = load_predictor(model, weights, config, workers.device(device), dtype, cuda_graphs)

        if tuned is not None:
            apply_adapter(predictor, tuned, spec, chunk_size, str(adapter))

        # One caption, or several for a long class list; a plain class list gives exactly the
        # detections of `GLIPPredictor.iter_predict`.
        items = iter_detect_with_spec(predictor, shard_sources, spec, box_threshold=box_threshold,
                                      chunk_size=chunk_size, batch_size=batch_size, skip_errors=not strict)
    outcome = run_images(items, len(shard), quiet or not workers.is_main, on_result=_vis_writer(outputs, shard))
    if workers.distributed:
        outcome = _gather_outcome(workers, outcome, shard)
        if outcome is None:  # not the main process: it writes nothing
            return

    if not quiet:
        _print_results(outcome.results, max_rows)
    if json_out is not None and not outcome.nothing_read:
        outputs.write_json(json_out, [r.to_dict() for r in outcome.results], quiet)
    if coco_index is not None and coco_results is not None and not outcome.nothing_read:
        # deferred import: keeps `glip --help` fast
        from glipcli.coco_results import coco_results as to_coco

        outputs.write_json(coco_results, to_coco(outcome.results, coco_index), quiet)
    finish(outcome, len(sources))


def _gather_outcome(workers, outcome: RunOutcome, shard: list[int]) -> RunOutcome | None:
    """Every process's results and failures, in input order, on the main process (None elsewhere)."""
    from dataclasses import replace

    from glipcli.sharding import merge_shards

    failed = {f.index for f in outcome.failures}
    read = [shard[i] for i in range(len(shard)) if i not in failed]
    parts = workers.gather((list(zip(read, outcome.results)),
                            [(shard[f.index], replace(f, index=shard[f.index])) for f in outcome.failures]))
    if parts is None:
        return None
    return RunOutcome([r for _, r in merge_shards([p[0] for p in parts])],
                      [f for _, f in merge_shards([p[1] for p in parts])], outcome.seconds)


def _vis_writer(outputs: OutputFiles, shard: list[int]):
    """Save a rendering per image while its decoded copy is at hand (None: no --save-vis)."""
    if outputs.vis_dir is None:
        return None
    # deferred import: keeps `glip --help` fast
    from glipcli.visualize import DrawBox, render, save_image

    def write(prepared, result) -> None:
        boxes = [DrawBox(d.box_xyxy, f"{d.label} {d.score:.2f}", d.phrase_index) for d in result.detections]
        save_image(render(prepared.image, boxes), outputs.vis_names[shard[prepared.index]])

    return write


def _print_results(results, max_rows: int) -> None:
    if len(results) > MAX_IMAGE_TABLES:
        table = Table(title=Text(f"{len(results)} images"))
        for column in ("image", "detections", "best label", "best score"):
            table.add_column(column, justify="left" if column in ("image", "best label") else "right")
        for result in results:
            best = result.detections[0] if result.detections else None
            table.add_row(Text(Path(result.image).name), str(len(result.detections)), Text(best.label) if best else "-",
                          f"{best.score:.3f}" if best else "-")
        stdout.print(table)
        return
    for result in results:
        table = Table(title=Text(f"{result.image} ({result.width}x{result.height}): "
                                 f"{len(result.detections)} detections"))
        for column in ("label", "score", "x0", "y0", "x1", "y1"):
            table.add_column(column, justify="left" if column == "label" else "right")
        for det in result.detections[:max_rows]:
            table.add_row(Text(det.label), f"{det.score:.3f}", *(f"{v:.1f}" for v in det.box_xyxy))
        stdout.print(table)
