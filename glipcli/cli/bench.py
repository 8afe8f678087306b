"""`glip bench`: ODinW transfer (zero-shot, few-shot, full data; full / prompt / linear tuning) and the paper's
COCO, LVIS and Flickr30K evaluations; the synthetic world's held-out transfer (`glip bench synthetic`). The work is
done by `glipcli.bench.runner` / `glipcli.bench.standard` / `glipcli.nano.bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glipcli.cli.app import app, stderr, stdout
from glipcli.cli.common import ConfigOpt, DeviceOpt, DtypeOpt, ModelOpt, QuietOpt, WeightsOpt
from glipcli.cli import ranges

bench_app = typer.Typer(name="bench", no_args_is_help=True, pretty_exceptions_enable=False,
                        short_help="Benchmarks: ODinW, COCO, LVIS, Flickr30K, synthetic world.",
                        help="Benchmarks: ODinW transfer across shots, seeds and tuning modes; COCO, LVIS, Flickr30K; "
                             "the synthetic world (held-out transfer of glip-nano).")
app.add_typer(bench_app, name="bench")

DataRootOpt = Annotated[Optional[Path], typer.Option(help="The folder holding the datasets (see each command).")]
OutputOpt = Annotated[Optional[Path], typer.Option(
    help="Result folder (default: bench-results/<benchmark>/<model>). A re-run in it resumes.")]
MaxImagesOpt = Annotated[Optional[int], typer.Option(
    min=1, callback=ranges.count(1),
           help="Evaluate only the first N images (a quick check; not comparable with the paper).")]
EvalBatchOpt = Annotated[int, typer.Option("--eval-batch-size", min=1,
                                           callback=ranges.count(1),
                                           help="Images per forward pass when evaluating (1 reproduces single-image "
                                                "results exactly).")]


def _model(model, weights, config, device, dtype):
    # deferred import: keeps `glip --help` fast
    from glipcli.bench.model import BenchModel

    return BenchModel(model=model, weights=weights, config=config, device=device, dtype=dtype)


def _print_files(files, quiet: bool) -> None:
    if not quiet:
        for path in files:
            stderr.print(f"wrote {path}", highlight=False)


@bench_app.command("odinw", short_help="ODinW (or your own suite): zero-shot, K-shot, full data.")
def odinw(
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="Zero-shot cells (the default when no training "
                                                                  "is asked for).")] = False,
    shots: Annotated[Optional[str], typer.Option(help="K-shot fine-tuning cells, e.g. 1,3,5,10.")] = None,
    seeds: Annotated[Optional[str], typer.Option(
        help="Seeds of the fine-tuning cells (default: 3,30,300 for --shots, 3 for --full).")] = None,
    full: Annotated[bool, typer.Option("--full", help="Fine-tune on all the training data.")] = False,
    mode: Annotated[str, typer.Option(help="Tuning: full, prompt (prompt tuning) or linear (linear probing); "
                                           "several separated by commas.")] = "full",
    prompts: Annotated[Optional[str], typer.Option(
        help="ODinW prompts: manual (the paper's, default) or plain (class names).")] = None,
    prompts_dir: Annotated[Optional[Path], typer.Option(help="Folder holding plain/ and manual/ prompt files "
                                                             "(default: prompts/odinw of this checkout).")] = None,
    suite: Annotated[str, typer.Option(
        help="odinw13, odinw35 or a suite file (.yaml) of your own datasets.")] = "odinw13",
    datasets: Annotated[Optional[str], typer.Option(help="Only these datasets, e.g. Raccoon,pothole.")] = None,
    data_root: Annotated[Optional[Path], typer.Option(
        help="Folder holding odinw/<dataset>/ (official layout) or Roboflow exports <dataset>/{train,valid}/ "
             "(default: $GLIP_DATA_ROOT, else ./DATASET).")] = None,
    skip_missing: Annotated[bool, typer.Option(help="Run the datasets found and skip the missing ones "
                                                    "(default: a missing dataset is an error).")] = False,
    download: Annotated[bool, typer.Option("--download", help="Download the missing ODinW datasets first "
                                                              "(as `glip data download odinw`).")] = False,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    weights: WeightsOpt = None,
    output: OutputOpt = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, callback=ranges.count(1),
                                                         help="Epoch cap of fine-tuning (default: official 200; "
                                                              "early stopping usually ends sooner).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, callback=ranges.count(1),
                                                             help="Training images per step (default: 4).")] = None,
    eval_batch_size: EvalBatchOpt = 1,
    keep_weights: Annotated[bool, typer.Option(
        help="Keep each fine-tuned cell's model_best.safetensors and checkpoints (default: deleted once the "
             "cell is recorded).")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    quiet: QuietOpt = False,
) -> None:
    """ODinW (or your own suite): zero-shot, K-shot and full-data transfer, tables in JSON, CSV and Markdown.

    Needs the datasets: --data-root DIR with odinw/<name>/ (official layout; `glip data download odinw` or
    --download fetches them) or <name>/{train,valid}/ Roboflow exports. Finished cells are skipped on a re-run
    with the same --output.
    """
    # deferred import: keeps `glip --help` fast
    from glipcli.bench.results import rich_table
    from glipcli.bench.runner import OdinwRequest, parse_int_list, run_odinw

    request = OdinwRequest(
        suite=suite, datasets=[d for d in (datasets or "").split(",") if d.strip()] or None, data_root=data_root,
        zero_shot=zero_shot, shots=parse_int_list(shots, "--shots"),
        seeds=parse_int_list(seeds, "--seeds") if seeds is not None else None, full_data=full,
        modes=[m.strip() for m in mode.split(",") if m.strip()], prompts=prompts, prompts_dir=prompts_dir,
        skip_missing=skip_missing, download=download, output=output, epochs=epochs, batch_size=batch_size,
        eval_batch_size=eval_batch_size, keep_weights=keep_weights)
    report = run_odinw(request, _model(model, weights, config, device, dtype), console=None if quiet else stderr,
                       progress=not quiet)
    if not quiet:
        stdout.print(rich_table(report.summary, title=f"{report.suite}: {report.model}"))
        _print_files((report.files.json, report.files.csv, report.files.markdown), quiet)


@bench_app.command("coco", short_help="Zero-shot COCO val2017 box AP, beside the paper's.")
def coco(
    data_root: DataRootOpt = None,
    ann: Annotated[Optional[Path], typer.Option(help="instances_val2017.json (default: "
                                                     "DATA_ROOT/annotations/instances_val2017.json).")] = None,
    images: Annotated[Optional[Path], typer.Option(
        help="The val2017 image folder (default: DATA_ROOT/val2017).")] = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    weights: WeightsOpt = None,
    output: OutputOpt = None,
    batch_size: EvalBatchOpt = 1,
    max_images: MaxImagesOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    quiet: QuietOpt = False,
) -> None:
    """Zero-shot COCO val2017 box AP (pycocotools), beside the published number for an official preset.

    Needs COCO val2017: DATA_ROOT/annotations/instances_val2017.json and DATA_ROOT/val2017/.
    """
    # deferred import: keeps `glip --help` fast
    from glipcli.bench.standard import run_coco

    report = run_coco(data_root, ann_file=ann, images=images, model=_model(model, weights, config, device, dtype),
                      output=output, batch_size=batch_size, max_images=max_images,
                      console=None if quiet else stderr, progress=not quiet)
    _show(report, quiet)


@bench_app.command("lvis", short_help="Zero-shot LVIS fixed AP (AP, APr, APc, APf).")
def lvis(
    data_root: DataRootOpt = None,
    split: Annotated[str, typer.Option(
        help="minival (5000 images, the paper's main number) or val (v1.0).")] = "minival",
    ann: Annotated[Optional[Path], typer.Option(help="The LVIS v1 annotation file (default: found under "
                                                     "DATA_ROOT/coco/annotations/).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="The COCO image folder holding val2017/ and train2017/ "
                                                        "(default: DATA_ROOT/coco).")] = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    weights: WeightsOpt = None,
    output: OutputOpt = None,
    batch_size: EvalBatchOpt = 1,
    chunk_size: Annotated[int, typer.Option(min=1, callback=ranges.count(1),
                                                   help="Classes per caption (official: 40).")] = 40,
    max_detections: Annotated[int, typer.Option(min=1, callback=ranges.count(1),
                                                       help="Detections per image (official: 300).")] = 300,
    max_images: MaxImagesOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    quiet: QuietOpt = False,
) -> None:
    """Zero-shot LVIS fixed AP (AP, APr, APc, APf) with the 1203 class names in chunked captions.

    Needs LVIS v1 annotations (e.g. DATA_ROOT/coco/annotations/lvis_v1_minival_inserted_image_name.json) and the
    COCO images (DATA_ROOT/coco/val2017/, train2017/).
    """
    # deferred import: keeps `glip --help` fast
    from glipcli.bench.standard import run_lvis

    report = run_lvis(data_root, split=split, ann_file=ann, images=images,
                      model=_model(model, weights, config, device, dtype), output=output, batch_size=batch_size,
                      max_images=max_images, chunk_size=chunk_size, max_detections=max_detections,
                      console=None if quiet else stderr, progress=not quiet)
    _show(report, quiet)


@bench_app.command("flickr30k", short_help="Flickr30K Entities phrase grounding: Recall@1/5/10.")
def flickr30k(
    data_root: DataRootOpt = None,
    split: Annotated[str, typer.Option(help="val or test.")] = "val",
    entities: Annotated[Optional[Path], typer.Option(
        help="The Flickr30K Entities release (val.txt, test.txt, Sentences/, Annotations/; default: "
             "DATA_ROOT/flickr30k_entities).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="The Flickr30K images <id>.jpg (default: "
                                                        "DATA_ROOT/flickr30k-images).")] = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    weights: WeightsOpt = None,
    output: OutputOpt = None,
    merged: Annotated[bool, typer.Option(help="The merged-box protocol (one box enclosing a phrase's boxes) "
                                              "instead of any-box.")] = False,
    max_images: MaxImagesOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    quiet: QuietOpt = False,
) -> None:
    """Flickr30K Entities phrase grounding: Recall@1/5/10 (any-box protocol) beside the published numbers.

    Needs the Flickr30K Entities annotations and the Flickr30K images.
    """
    # deferred import: keeps `glip --help` fast
    from glipcli.bench.standard import run_flickr30k

    report = run_flickr30k(data_root, split=split, entities=entities, images=images,
                           model=_model(model, weights, config, device, dtype), output=output,
                           max_images=max_images, merge_boxes=merged, console=None if quiet else stderr,
                           progress=not quiet)
    _show(report, quiet)


def _show(report, quiet: bool) -> None:
    if quiet:
        return
    stdout.print(report.rich_table())
    for note in report.notes:
        stderr.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    _print_files(report.files, quiet)


@bench_app.command("synthetic", short_help="Held-out synthetic world: transfer of glip-nano.")
def synthetic(
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Preset or checkpoint path, as for `glip detect`. Default: nano (unless --weights "
                              "or --config is given).")] = None,
    config: ConfigOpt = None,
    weights: WeightsOpt = None,
    output: OutputOpt = None,
    seed: Annotated[int, typer.Option(callback=ranges.seed,
                                      help="World seed of the held-out data (generated into OUTPUT/data/).")] = 1,
    images: Annotated[int, typer.Option(min=1, callback=ranges.count(1), help="Test images per held-out set.")] = 200,
    train_images: Annotated[int, typer.Option(min=1, callback=ranges.count(1),
                                                     help="Never-seen-shape training pool the K-shot subset "
                                                          "is drawn from.")] = 50,
    valid_images: Annotated[int, typer.Option(min=1, callback=ranges.count(1),
                                                     help="Never-seen-shape validation pool (K-shot subset "
                                                          "too, as the official few-shot runs).")] = 50,
    shots: Annotated[int, typer.Option(min=1, callback=ranges.count(1),
                                              help="K of the few-shot fine-tuning and prompt tuning.")] = 5,
    train_seed: Annotated[int, typer.Option(callback=ranges.seed,
                                            help="Seed of the K-shot subset and training order.")] = 3,
    epochs: Annotated[Optional[int], typer.Option(min=1, callback=ranges.count(1),
                                                         help="Epoch cap of the tuning runs (default: official "
                                                              "200 with early stopping).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, callback=ranges.count(1),
                                                             help="Training images per step (default: 4).")] = None,
    val_shots: Annotated[Optional[int], typer.Option(
        min=0, callback=ranges.count(0),
               help="Validation images' K-shot subset that picks the best epoch (default: --shots, official; "
                    "0: the whole validation pool).")] = None,
    patience: Annotated[Optional[int], typer.Option(
        min=1, callback=ranges.count(1),
               help="Evaluations without a better validation AP before a tuning run stops (default: official 8).")] = None,
    freeze: Annotated[Optional[list[str]], typer.Option(
        "--freeze", metavar="PART",
        help="Fine-tuning: freeze backbone (Swin + FPN), language, fusion (X-MHA) or head; repeat or separate by "
             "commas (default: none, official).")] = None,
    backbone_lr_factor: Annotated[float, typer.Option(callback=ranges.learning_rate_factor,
                                                      help="Fine-tuning: image-encoder lr = base lr x this.")] = 1.0,
    fusion_lr_factor: Annotated[float, typer.Option(callback=ranges.learning_rate_factor,
                                                    help="Fine-tuning: fusion (X-MHA) lr = base lr x this.")] = 1.0,
    head_lr_factor: Annotated[float, typer.Option(callback=ranges.learning_rate_factor,
                                                  help="Fine-tuning: lr of the rest of the head = base lr x this.")
                              ] = 1.0,
    lr: Annotated[Optional[float], typer.Option(callback=ranges.learning_rate,
                                                help="Fine-tuning base lr (default: official 1e-4).")] = None,
    prompt_lr: Annotated[Optional[float], typer.Option(callback=ranges.learning_rate,
                                                       help="Prompt-tuning lr (default: official 0.05).")] = None,
    prompt_patience: Annotated[Optional[int], typer.Option(
        callback=ranges.count(1), help="Prompt tuning: evaluations without a better validation AP before it stops "
                                       "(default: --patience).")] = None,
    prompt_lr_patience: Annotated[Optional[int], typer.Option(
        callback=ranges.count(0), help="Prompt tuning: evaluations without a better validation AP before its lr drops "
                                       "x0.1 (default: official 3).")] = None,
    eval_batch_size: EvalBatchOpt = 4,
    keep_weights: Annotated[bool, typer.Option(help="Keep the tuned weights and checkpoints.")] = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Held-out synthetic world (default model: nano): zero-shot on unseen colour-shape combinations, the
    never-seen shape zero-shot / after K-shot fine-tuning / after prompt tuning, and plain vs synonym vs
    descriptive prompts. One table; JSON and Markdown in --output. Needs nothing on disk.
    """
    # deferred import: keeps `glip --help` fast
    from glipcli.nano.bench import SyntheticRequest, rich_table, run_synthetic

    if model is None and weights is None and config is None:
        model = "nano"
    request = SyntheticRequest(output=output, seed=seed, images=images, train_images=train_images,
                               valid_images=valid_images, shots=shots, train_seed=train_seed, epochs=epochs,
                               batch_size=batch_size, val_shots=val_shots, patience=patience,
                               eval_batch_size=eval_batch_size, keep_weights=keep_weights, freeze=tuple(freeze or ()),
                               backbone_lr_factor=backbone_lr_factor, fusion_lr_factor=fusion_lr_factor,
                               head_lr_factor=head_lr_factor, lr=lr, prompt_lr=prompt_lr,
                               prompt_patience=prompt_patience, prompt_lr_patience=prompt_lr_patience)
    report = run_synthetic(request, _model(model, weights, config, device, "float32"),
                           console=None if quiet else stderr, progress=not quiet)
    if not quiet:
        stdout.print(rich_table(report))
    _print_files(report.files, quiet)
