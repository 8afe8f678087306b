"""`glip bench` as a Python API: ODinW-style suites across shots, seeds and tuning modes, and the paper's
COCO / LVIS / Flickr30K evaluations (`glipcli.bench.standard`, re-exported here).

    from glipcli.bench.runner import BenchModel, OdinwRequest, run_odinw
    report = run_odinw(OdinwRequest(suite="odinw13", data_root="DATASET", zero_shot=True),
                       BenchModel("glip-t"))
    report.files.markdown, report.summary

Cells (`glipcli.bench.results.CellKey`) are run in order: every zero-shot cell, then the fine-tuning
cells (dataset x shots x mode x seed). Each finished cell is written at once to `OUT/cells/` and the
tables `OUT/results.{json,csv,md}` are rewritten, so an interrupted run loses at most the cell in
progress; a re-run skips finished cells (`OUT/run.json` refuses another model in the same folder).

Zero-shot cell: the model detects the dataset's prompt file (ODinW: `prompts/odinw/{manual,plain}/`;
suite file: its `prompt_file`, else the category names) on the evaluation split, scored with
pycocotools (`glipcli.evaluation.detection`).

Fine-tuning cell (K shots, seed S, mode full / prompt / linear): the engine (`glipcli.engine.trainer`)
trains a fresh copy of the model on the few-shot training set, the prepared
`fewshot_train_shot{K}_seed{S}.json` when the official layout has it (then the official K-shot schedule
is set explicitly), else the engine's seeded sampler on the train split (the official rule); all the
train split for `ALL_DATA`. The validation split (`val`, else the evaluation split) selects the best
epoch and stops early (the engine's K-shot validation subset); the best model is then evaluated like a
zero-shot cell, on the `test` split when the dataset has one (the official `--evaluate_only_best_on_test`)
and on the evaluation split otherwise. The training caption is the dataset's prompt (labels renamed to
the training set's category names when they differ only in spelling). Each cell trains in
`OUT/runs/<cell>/` (the engine's run folder): an interrupted cell resumes from its last checkpoint, a
finished but unrecorded one is only evaluated. Once the cell is recorded its checkpoints and
`model_best.safetensors` are deleted unless `keep_weights` (GLIP-T weights are ~0.9 GB a cell); the
log, metrics, prompt and prompt-tuning adapters are kept.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glipcli.data.odinw.layout import BenchDataset, default_data_root
from glipcli.bench.model import BenchModel, default_output
from glipcli.data.odinw.download import download_odinw, missing_message, odinw_archives
from glipcli.data.odinw.registry import OFFICIAL_SEEDS, OdinwDataset
from glipcli.bench.results import (ALL_DATA, MODES, ZERO_SHOT, CellKey, CellResult, ResultsStore, Summary,
                                   TableFiles, summarize)
from glipcli.bench.session import BenchSession, free_memory, say
from glipcli.bench.split_eval import evaluate_split
from glipcli.bench.standard import run_coco, run_flickr30k, run_lvis  # noqa: F401  (re-exported)
from glipcli.bench.suite import load_suite
from glipcli.checkpoint import load_checkpoint
from glipcli.data.coco import CocoDetectionData, load_coco
from glipcli.data.fewshot import default_patience, default_schedule
from glipcli.engine import training_state
from glipcli.engine.prompt_tuning import load_adapter
from glipcli.engine.train_config import TrainConfig
from glipcli.engine.trainer import BEST_ADAPTER, BEST_MODEL, METRICS_FILE, TrainData, Trainer
from glipcli.errors import GlipError
from glipcli.evaluation.coco import load_ground_truth
from glipcli.evaluation.detection import CategoryMap, dataset_prompt_spec, map_classes, relabel_spec
from glipcli.predictor import GLIPPredictor
from glipcli.prompts.prompt_file import PromptSpec

ENGINE_TASKS = {"full": "full", "prompt": "prompt", "linear": "linear-probe"}
DEFAULT_FULL_DATA_SEEDS = (3,)
RUNS_DIR = "runs"

__all__ = ["BenchModel", "OdinwRequest", "OdinwReport", "run_odinw", "plan_cells", "parse_int_list",
           "run_coco", "run_lvis", "run_flickr30k"]


def parse_int_list(text: str | Sequence[int] | None, what: str) -> list[int]:
    """`"1,3,5"` (or a list) -> [1, 3, 5]; GlipError naming `what` for anything else."""
    if text is None:
        return []
    if not isinstance(text, str):
        values = list(text)
    else:
        values = []
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            try:
                values.append(int(part))
            except ValueError:
                raise GlipError(f"{what} must be whole numbers separated by commas (got {text!r})") from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise GlipError(f"{what} must be whole numbers (got {values!r})")
    return list(dict.fromkeys(values))


@dataclass
class OdinwRequest:
    """What `glip bench odinw` was asked (see the CLI help). With none of zero_shot / shots /
    full_data, the zero-shot cells are run. seeds: default 3, 30, 300 for K-shot cells and 3 for
    full-data cells. prompts: ODinW prompt variant (`manual` default); suite files carry their own.
    train_options: further `TrainConfig` fields (Python API; e.g. {"augment": False})."""

    suite: str = "odinw13"
    datasets: Sequence[str] | None = None
    data_root: str | Path | None = None
    zero_shot: bool = False
    shots: Sequence[int] = ()
    seeds: Sequence[int] | None = None
    full_data: bool = False
    modes: Sequence[str] = ("full",)
    prompts: str | None = None
    prompts_dir: str | Path | None = None
    skip_missing: bool = False
    download: bool = False
    output: str | Path | None = None
    epochs: int | None = None
    batch_size: int | None = None
    eval_batch_size: int = 1
    keep_weights: bool = False
    train_options: dict[str, Any] = field(default_factory=dict)

    @property
    def trains(self) -> bool:
        return bool(self.shots) or self.full_data


@dataclass
class OdinwReport:
    """What a run did: the cells evaluated now and those skipped as finished, the missing datasets
    (one line each), the summary and the table files."""

    output: Path
    suite: str
    model: str
    evaluated: list[CellKey]
    skipped: list[CellKey]
    missing: list[str]
    summary: Summary
    files: TableFiles
    paper_model: str | None


def _check_request(req: OdinwRequest) -> OdinwRequest:
    for k in req.shots:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise GlipError(f"--shots must be whole numbers >= 1 (got {k!r}); use --zero-shot or --full")
    unknown = [m for m in req.modes if m not in MODES]
    if unknown or not req.modes:
        raise GlipError(f"--mode must be one of {', '.join(MODES)} (got {', '.join(map(str, unknown)) or 'none'})")
    if not req.trains:
        given = [flag for flag, value in (("--seeds", req.seeds), ("--epochs", req.epochs),
                                          ("--batch-size", req.batch_size)) if value is not None]
        if given:
            raise GlipError(f"{', '.join(given)} only apply to fine-tuning cells (--shots or --full)")
    if req.seeds is not None and not req.seeds:
        raise GlipError("--seeds needs at least one seed")
    if req.epochs is not None and req.epochs < 1:
        raise GlipError(f"--epochs must be at least 1 (got {req.epochs})")
    if req.batch_size is not None and req.batch_size < 1:
        raise GlipError(f"--batch-size must be at least 1 (got {req.batch_size})")
    if req.eval_batch_size < 1:
        raise GlipError(f"--eval-batch-size must be at least 1 (got {req.eval_batch_size})")
    return req


def plan_cells(datasets: Sequence[BenchDataset], req: OdinwRequest) -> list[tuple[CellKey, BenchDataset]]:
    """Every cell of the request, zero-shot cells first, in dataset order."""
    zero = req.zero_shot or not req.trains
    cells: list[tuple[CellKey, BenchDataset]] = []
    if zero:
        cells += [(CellKey.make(d.name, ZERO_SHOT, None, "zero-shot", d.prompts), d) for d in datasets]
    shot_seeds = list(req.seeds) if req.seeds is not None else list(OFFICIAL_SEEDS)
    full_seeds = list(req.seeds) if req.seeds is not None else list(DEFAULT_FULL_DATA_SEEDS)
    settings = [(k, shot_seeds) for k in req.shots] + ([(ALL_DATA, full_seeds)] if req.full_data else [])
    for d in datasets:
        for shots, seeds in settings:
            for mode in req.modes:
                cells += [(CellKey.make(d.name, shots, seed, mode, d.prompts), d) for seed in seeds]
    return cells


# -- zero-shot cells -------------------------------------------------------------------------------------
def zero_shot_cell(session: BenchSession, key: CellKey, d: BenchDataset) -> CellResult:
    """The base model on the dataset's evaluation split."""
    spec = dataset_prompt_spec(load_ground_truth(d.eval.ann_file), d.prompt_file, str(d.eval.ann_file))
    metrics, info = evaluate(session.predictor(), d, d.eval_split, spec, session, _label(key))
    _add_dataset_info(info, d, d.eval_split)
    return CellResult(key, metrics.ap, metrics.ap50, dict(metrics.metrics), info)


def evaluate(predictor, d: BenchDataset, split: str, spec, session: BenchSession, label: str):
    """Score `predictor` on split `split` of `d` (module level: the seam tests count model evaluations at)."""
    with session.progress_bar() as bar:
        task = bar.add_task(label, total=None)
        callback = ((lambda done, total: bar.update(task, completed=done, total=total)) if session.show_progress
                    else None)
        return evaluate_split(predictor, d.splits[split], spec, batch_size=session.eval_batch_size,
                              progress=callback)


# -- fine-tuning cells -----------------------------------------------------------------------------------
@dataclass
class _TrainingSplits:
    train: CocoDetectionData
    val: CocoDetectionData
    val_name: str
    eval_split: str
    prepared: Path | None  # the official layout's few-shot file, when it has one


def _training_splits(key: CellKey, d: BenchDataset) -> _TrainingSplits:
    """The cell's training set (the prepared K-shot file, else the train split), validation split
    (`val`, else the evaluation split) and final evaluation split (`test`, else the evaluation split)."""
    if d.train is None:
        raise GlipError(f"{d.name}: no train split to fine-tune on")
    prepared = d.fewshot_file(key.shots, key.seed) if key.shots > 0 else None
    train = load_coco(prepared or d.train.ann_file, d.train.img_dir, "train")
    val_name = "val" if "val" in d.splits else d.eval_split
    val = load_coco(d.splits[val_name].ann_file, d.splits[val_name].img_dir, "valid", reference=train)
    return _TrainingSplits(train, val, val_name, "test" if "test" in d.splits else d.eval_split, prepared)


def _training_spec(d: BenchDataset, train: CocoDetectionData) -> tuple[PromptSpec, CategoryMap]:
    """The dataset's prompt with its classes labelled by the training set's category names."""
    base_spec = dataset_prompt_spec(json.loads(Path(train.ann_path).read_text(encoding="utf-8")), d.prompt_file,
                                    str(train.ann_path))
    train_gt = {"categories": [{"id": i, "name": n} for i, n in zip(train.category_ids, train.classes)],
                "annotations": []}
    mapping = map_classes(base_spec, train_gt, str(train.ann_path))
    name_of = dict(zip(train.category_ids, train.classes))
    left_out = [n for c, n in name_of.items() if c not in set(mapping.category_ids)]
    if left_out:
        raise GlipError(f"{d.name}: the training categories {', '.join(map(repr, left_out))} have no class in the "
                        f"prompt {d.prompt_file or '(category names)'}")
    return relabel_spec(base_spec, [name_of[c] for c in mapping.category_ids]), mapping


def _train_config(req: OdinwRequest, key: CellKey, prepared: Path | None) -> TrainConfig:
    """The engine's settings for the cell: the official K-shot schedule for a prepared file, the
    seeded sampler otherwise, then the request's overrides."""
    options: dict[str, Any] = {"task": ENGINE_TASKS[key.mode], "seed": key.seed}
    if key.shots == ALL_DATA:
        options["shots"] = 0
    elif prepared is not None:
        epochs, copies = default_schedule(key.shots)
        lr_patience, stop_patience = default_patience(key.shots)
        options.update(shots=0, val_shots=key.shots, epochs=epochs, copies=copies, lr_patience=lr_patience,
                       stop_patience=stop_patience)
    else:
        options["shots"] = key.shots
    if req.epochs is not None:
        options["epochs"] = req.epochs
    if req.batch_size is not None:
        options["batch_size"] = req.batch_size
    options.update(req.train_options)
    return TrainConfig(**options)


def _trained_model(session: BenchSession, key: CellKey, splits: _TrainingSplits, spec: PromptSpec,
                   config: TrainConfig, run_dir: Path) -> tuple[Any, Path, dict[str, Any]]:
    """A copy of the base model trained in `run_dir` (resumed from its checkpoint, or only reloaded when
    the run finished earlier): (model, its best weights or adapter, the run's metrics.json)."""
    best = run_dir / (BEST_ADAPTER if key.mode == "prompt" else BEST_MODEL)
    finished = _finished(run_dir / METRICS_FILE) and best.is_file()
    resume = not finished and training_state.latest(run_dir) is not None
    if not finished and not resume and run_dir.exists() and any(run_dir.iterdir()):
        moved = _set_aside(run_dir)
        session.say(f"{key.file_stem}: an unfinished run without a checkpoint was moved to {moved}")
    session.release_predictor()
    model = copy.deepcopy(session.base())
    if finished:
        session.say(f"{_label(key)}: training finished earlier; evaluating its best model")
        metrics_file = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
        if key.mode != "prompt":
            load_checkpoint(model, best)
        return model, best, metrics_file
    session.say(f"{_label(key)}: {'resuming' if resume else 'training'} in {run_dir}")
    trainer = Trainer(model, TrainData(splits.train, splits.val, None), config, run_dir, prompt_spec=spec,
                      resume=resume, cpu=session.device.type == "cpu", progress=session.show_progress,
                      console=session.trainer_console(), run_info={"bench_cell": key.to_dict()})
    return model, best, trainer.fit().metrics


def _evaluate_tuned(session: BenchSession, key: CellKey, d: BenchDataset, split: str, spec: PromptSpec,
                    model, best: Path):
    """Score the tuned model (with its prompt adapter in prompt mode) on `split`; frees it afterwards."""
    handle = load_adapter(best).attach(model, source=str(best)) if key.mode == "prompt" else None
    predictor = GLIPPredictor(model, device=session.device, dtype=session.dtype, cast_weights=False)
    try:
        return evaluate(predictor, d, split, spec, session, _label(key))
    finally:
        if handle is not None:
            handle.remove()
        del predictor, model
        free_memory()


def finetune_cell(session: BenchSession, req: OdinwRequest, key: CellKey, d: BenchDataset, out: Path) -> CellResult:
    """Train a copy of the base model for the cell (see the module docstring) and score its best model."""
    start = time.perf_counter()
    splits = _training_splits(key, d)
    spec, mapping = _training_spec(d, splits.train)
    config = _train_config(req, key, splits.prepared)
    run_dir = out / RUNS_DIR / key.file_stem
    model, best, metrics_file = _trained_model(session, key, splits, spec, config, run_dir)
    metrics, info = _evaluate_tuned(session, key, d, splits.eval_split, spec, model, best)
    _add_dataset_info(info, d, splits.eval_split, mapping.notes)
    info.update(train_ann=str(splits.train.ann_path),
                fewshot_file=None if splits.prepared is None else str(splits.prepared),
                sampler="all data" if key.shots == ALL_DATA else
                "prepared file" if splits.prepared is not None else "seeded sampler",
                val_split=splits.val_name, train_images=metrics_file.get("train_images"),
                best_epoch=metrics_file.get("best_epoch"), epochs_run=metrics_file.get("epochs_run"),
                stopped_early=metrics_file.get("stopped_early"), run_dir=str(run_dir),
                train_config=config.resolved().to_dict(), seconds=round(time.perf_counter() - start, 2))
    return CellResult(key, metrics.ap, metrics.ap50, dict(metrics.metrics), info)


def cleanup_cell(req: OdinwRequest, key: CellKey, out: Path) -> None:
    """After a fine-tuning cell is recorded: drop its resumable checkpoints and weights."""
    if req.keep_weights or key.shots == ZERO_SHOT:
        return
    run_dir = out / RUNS_DIR / key.file_stem
    shutil.rmtree(run_dir / training_state.CHECKPOINTS, ignore_errors=True)
    (run_dir / BEST_MODEL).unlink(missing_ok=True)


def _label(key: CellKey) -> str:
    return f"{key.dataset} {key.setting.label}" + ("" if key.seed is None else f", seed {key.seed}")


def _add_dataset_info(info: dict[str, Any], d: BenchDataset, split: str, notes: Sequence[str] = ()) -> None:
    """The cell's dataset facts; notes: the dataset's, the evaluation's, then `notes` (each once)."""
    info.update(eval_split=split, layout=d.layout, prompt_file=None if d.prompt_file is None else str(d.prompt_file),
                notes=list(dict.fromkeys([*d.notes, *info.get("notes", []), *notes])))


def _finished(metrics_path: Path) -> bool:
    try:
        return bool(json.loads(metrics_path.read_text(encoding="utf-8")).get("finished"))
    except (OSError, ValueError, AttributeError):
        return False


def _set_aside(folder: Path) -> Path:
    n = 1
    while (target := folder.with_name(f"{folder.name}.unfinished-{n}")).exists():
        n += 1
    folder.rename(target)
    return target


def run_odinw(req: OdinwRequest, model: BenchModel | None = None, console=None, progress: bool = False) -> OdinwReport:
    """Run every pending cell of the request and write the tables (see the module docstring)."""
    model = model or BenchModel()
    req = _check_request(req)
    full_suite = load_suite(req.suite)
    suite = full_suite.select(list(req.datasets) if req.datasets else None)
    if not full_suite.is_odinw and req.prompts is not None:
        raise GlipError("--prompts applies to the ODinW suites; a suite file gives each dataset its prompt_file")
    data_root = Path(req.data_root) if req.data_root is not None else None
    if full_suite.is_odinw and data_root is None:
        data_root = default_data_root()
    avail = suite.locate(data_root, prompts=req.prompts or "manual", prompts_dir=req.prompts_dir,
                         need_train=req.trains)
    if req.download and not full_suite.is_odinw:
        raise GlipError("--download fetches the datasets of the ODinW suites; a suite file names datasets of "
                        "your own")
    if full_suite.is_odinw and avail.missing:
        names = [m.name for m in avail.missing]
        if req.download:
            download_odinw(odinw_archives(datasets=names), data_root, say=lambda text: say(console, text))
            avail = suite.locate(data_root, prompts=req.prompts or "manual", prompts_dir=req.prompts_dir,
                                 need_train=req.trains)
        elif not req.skip_missing or not avail.found:
            raise GlipError(missing_message(names, suite.names, full_suite.name, data_root))
    missing = avail.report()
    found = avail.require(req.skip_missing)
    session = BenchSession(model, console, progress, eval_batch_size=req.eval_batch_size, cast_weights=False)
    for line in missing:
        session.say(f"skipping {line}")
    for d in found:
        for note in d.notes:
            session.say(f"{d.name}: {note}")

    out = Path(req.output) if req.output is not None else default_output(suite.name, model)
    identity = {"benchmark": "odinw", "suite": full_suite.name, **model.identity()}
    if req.trains:
        identity["training"] = {"epochs": req.epochs, "batch_size": req.batch_size,
                                **{k: v for k, v in sorted(req.train_options.items())}}
    store = ResultsStore(out, run=identity)
    cells = plan_cells(found, req)
    pending = store.pending([k for k, _ in cells])
    skipped = [k for k, _ in cells if k not in set(pending)]
    if skipped:
        session.say(f"{len(skipped)} of {len(cells)} cells already finished in {out} (skipped)")

    paper_model = model.paper_model
    paper_names = {e.name: e.paper_name for e in full_suite.datasets if isinstance(e, OdinwDataset)}
    selected = set(suite.names)

    def table_names() -> list[str]:
        have = {c.key.dataset for c in store.cells()}
        return [n for n in full_suite.names if n in selected or n in have]

    evaluated: list[CellKey] = []
    by_key = dict(cells)
    for key in pending:
        d = by_key[key]
        result = zero_shot_cell(session, key, d) if key.shots == ZERO_SHOT else finetune_cell(session, req, key, d, out)
        store.add(result)
        cleanup_cell(req, key, out)
        evaluated.append(key)
        store.write_tables(datasets=table_names(), model=paper_model, paper_names=paper_names, suite=full_suite.name)
        session.say(f"{_label(key)}: AP {100 * result.ap:.1f}, AP50 {100 * result.ap50:.1f} "
                   f"({result.info.get('images')} images, {result.info.get('eval_split')} split, "
                   f"{result.info.get('seconds')} s)")
    files = store.write_tables(datasets=table_names(), model=paper_model, paper_names=paper_names,
                               suite=full_suite.name)
    summary = summarize(store.cells(), table_names(), paper_model, paper_names, full_suite.name)
    return OdinwReport(out, full_suite.name, model.label, evaluated, skipped, missing, summary, files, paper_model)

