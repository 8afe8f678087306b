"""Labelling a folder of images into a training-ready dataset, on one process or many.

    >>> from glipcli import GLIPPredictor
    >>> from glipcli.labeling import LabelConfig, label_images
    >>> from glipcli.prompts.prompt_file import PromptSpec
    >>> predictor = GLIPPredictor.from_pretrained("glip-l", device="cuda")
    >>> outcome = label_images(predictor, ["photos/a.jpg", "photos/b.jpg"], PromptSpec.from_yaml("ontology.yaml"),
    ...                        LabelConfig(output=Path("ds")))

Steps: every process checks the output folder alike; the main one prepares it; each process
labels its shard (`glipcli.sharding`), appending every image's labels to its journal as the image
completes and skipping images any journal already holds; the main process gathers every shard,
applies the filters, drops or keeps empty images, deals the splits and writes the dataset
(COCO or YOLO), the summary and an optional preview, `labels.json` last.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from glipcli.chunked_detection import iter_detect_with_spec
from glipcli.data.batching import ImageFailure
from glipcli.device import resolve_dtype
from glipcli.errors import GlipError
from glipcli.io import atomic_write, write_json
from glipcli.labeling.coco_writer import write_coco
from glipcli.labeling.filters import LabelFilters
from glipcli.labeling.journal import Journal, read_journals
from glipcli.labeling.ontology import Ontology
from glipcli.labeling.output import SUMMARY_JSON, SUMMARY_MD, OutputPlan, plan_output, prepare_output
from glipcli.labeling.placement import MODES
from glipcli.labeling.preview import PREVIEW_DIR, render_preview
from glipcli.labeling.records import ImageLabels, LabelBox
from glipcli.labeling.splits import DEFAULT_SPLIT, assign_splits, parse_splits, split_members
from glipcli.labeling.summary import LabelSummary, summarise
from glipcli.labeling.yolo_writer import write_yolo
from glipcli.predictor import GLIPPredictor, ImageResult
from glipcli.prompts.prompt_file import PromptSpec
from glipcli.sharding import Workers, merge_shards

FORMATS = ("coco", "yolo")
PROMPT_FILE = "prompt.yaml"


@dataclass(frozen=True)
class LabelConfig:
    """A labelling run. box_threshold/chunk_size: as `glip detect` (per-class thresholds of the
    prompt file win); splits: fractions by split name; image_mode: copy or link; preview:
    how many images to render into OUT/preview (0: none)."""

    output: Path
    format: str = "coco"
    splits: dict[str, float] = field(default_factory=lambda: parse_splits(DEFAULT_SPLIT))
    seed: int = 0
    image_mode: str = "copy"
    box_threshold: float = 0.3
    chunk_size: int | None = None
    filters: LabelFilters = field(default_factory=LabelFilters)
    keep_empty: bool = False
    batch_size: int = 1
    preview: int = 0
    overwrite: bool = False
    skip_errors: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise GlipError(f"--format must be one of {', '.join(FORMATS)} (got {self.format!r})")
        if self.image_mode not in MODES:
            raise GlipError(f"images are copied or linked, not {self.image_mode!r}")
        if not 0.0 <= self.box_threshold <= 1.0:
            raise GlipError(f"--box-threshold must be in [0, 1] (got {self.box_threshold})")
        if self.preview < 0:
            raise GlipError(f"--save-vis must be at least 0 (got {self.preview})")

    def dataset_settings(self) -> dict[str, Any]:
        """The settings that shape the written dataset but not the model's labels."""
        return {"format": self.format, "splits": self.splits, "seed": self.seed, "images": self.image_mode,
                "keep_empty": self.keep_empty, "filters": asdict(self.filters)}


@dataclass
class LabelOutcome:
    """labelled: images this process labelled now; resumed: images of its shard a journal
    already held; failures: unreadable images (all processes' on the main one); summary: the
    written dataset's (main process only)."""

    labelled: int
    resumed: int
    failures: list[ImageFailure]
    seconds: float
    summary: LabelSummary | None = None


def labels_of(result: ImageResult, key: str) -> ImageLabels:
    """The journal record of one detection result (labels are class indices of the spec)."""
    boxes = tuple(LabelBox(d.phrase_index, tuple(d.box_xyxy), d.score) for d in result.detections)
    return ImageLabels(key=key, image=result.image, width=result.width, height=result.height, boxes=boxes)


def label_settings(spec: PromptSpec, config: LabelConfig, model: dict[str, Any], dtype: str | torch.dtype
                   ) -> dict[str, Any]:
    """What the journal's labels depend on: a run resumes only with the same."""
    return {"model": model, "prompt": spec.to_dict(), "box_threshold": config.box_threshold,
            "chunk_size": config.chunk_size, "dtype": str(resolve_dtype(dtype)).removeprefix("torch.")}


def label_images(predictor: GLIPPredictor, sources: Sequence[str | Path], spec: PromptSpec, config: LabelConfig, *,
                 model: dict[str, Any], workers: Workers | None = None,
                 on_image: Callable[[ImageLabels | ImageFailure], None] | None = None) -> LabelOutcome:
    """Label `sources` with the spec's classes and write the dataset to `config.output`.

    model: what identifies the model (e.g. its preset or weights path and size); a resumed run
    must have the same, since the journal's labels came from it. on_image: called as each image
    of this process completes, or is found in a journal (a progress bar)."""
    workers = workers or Workers()
    start = time.perf_counter()
    ontology = Ontology(spec)
    settings = label_settings(spec, config, model, predictor.dtype)
    plan = _prepared_output(config, settings, sources, workers)

    keys = [str(Path(s).resolve()) for s in sources]
    done = read_journals(plan.work_dir)
    shard = workers.shard(sources, config.batch_size)
    todo = [i for i in shard if keys[i] not in done]
    if on_image is not None:
        for i in shard:
            if keys[i] in done:
                on_image(done[keys[i]])
    failures: list[ImageFailure] = []
    with Journal(plan.work_dir, workers.rank) as journal:
        items = iter_detect_with_spec(predictor, [str(sources[i]) for i in todo], spec,
                                      box_threshold=config.box_threshold, chunk_size=config.chunk_size,
                                      batch_size=config.batch_size, skip_errors=config.skip_errors)
        for item in items:
            if isinstance(item, ImageFailure):
                failure = ImageFailure(todo[item.index], item.source, item.error)
                failures.append(failure)
                if on_image is not None:
                    on_image(failure)
                continue
            prepared, result = item
            labels = labels_of(result, keys[todo[prepared.index]])
            journal.append(labels)
            done[labels.key] = labels
            if on_image is not None:
                on_image(labels)
    outcome = LabelOutcome(labelled=len(todo) - len(failures), resumed=len(shard) - len(todo),
                           failures=failures, seconds=0.0)
    # The image as this run names it (a journal written from another folder names it otherwise).
    mine = [(i, replace(done[keys[i]], image=str(sources[i]))) for i in shard if keys[i] in done]
    gathered = workers.gather((mine, [(f.index, f) for f in failures]))
    if gathered is None:
        outcome.seconds = time.perf_counter() - start
        return outcome
    records = [labels for _, labels in merge_shards([part[0] for part in gathered])]
    outcome.failures = [f for _, f in merge_shards([part[1] for part in gathered])]
    outcome.summary = write_dataset(records, ontology, config, settings, [f.source for f in outcome.failures])
    outcome.seconds = time.perf_counter() - start
    return outcome


def _prepared_output(config: LabelConfig, settings: dict[str, Any], sources: Sequence[str | Path],
                     workers: Workers) -> OutputPlan:
    """The main process checks and prepares the output folder; every process gets its decision
    (or its refusal), so machines that do not share a file system never disagree."""
    decision: OutputPlan | str | None = None
    if workers.is_main:
        try:
            decision = plan_output(config.output, settings, config.overwrite, sources)
            prepare_output(decision, settings)
        except GlipError as exc:
            decision = str(exc)
    decision = workers.broadcast(decision)
    if isinstance(decision, str):
        raise GlipError(decision)
    decision.work_dir.mkdir(parents=True, exist_ok=True)
    return decision


def write_dataset(records: Sequence[ImageLabels], ontology: Ontology, config: LabelConfig,
                  settings: dict[str, Any], unreadable: Sequence[str]) -> LabelSummary:
    """Filter, split and write the labelled images (input order) as the configured dataset."""
    filtered = [config.filters.apply(r) for r in records]
    kept = [r for r in filtered if r.boxes or config.keep_empty]
    if not kept:
        if not records:
            raise GlipError(f"none of the {len(unreadable)} images could be read (listed above); nothing was written")
        raise GlipError(f"no boxes in any of the {len(records)} images (lower --box-threshold, check the prompt, "
                        "or pass --keep-empty to write them as negatives); no dataset was written")
    assigned = assign_splits(len(kept), config.splits, config.seed)
    splits = {name: [kept[i] for i in split_members(assigned, name)] for name in config.splits}
    splits = {name: members for name, members in splits.items() if members}
    output = config.output
    writer = write_coco if config.format == "coco" else write_yolo
    written = writer(output, splits, ontology, config.image_mode)
    prompt_text = ontology.prompt_yaml()
    atomic_write(output / PROMPT_FILE, lambda tmp: tmp.write_text(prompt_text, encoding="utf-8"))
    written += [PROMPT_FILE, SUMMARY_MD]
    if config.preview:
        render_preview(splits, ontology.names, output / PREVIEW_DIR, config.preview)
        written.append(PREVIEW_DIR)
    summary = summarise(splits, ontology.names, fmt=config.format, dropped_empty=len(filtered) - len(kept),
                        unreadable=unreadable, settings={**settings, **config.dataset_settings()}, written=written)
    markdown = summary.markdown()
    atomic_write(output / SUMMARY_MD, lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    write_json(output / SUMMARY_JSON, summary.to_json(), overwrite=True)
    return summary
