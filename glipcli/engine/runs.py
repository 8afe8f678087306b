"""Starting and resuming training runs from what a user typed (the API under `glip finetune` and
`glip prompt-tune`).

    from glipcli.engine.runs import RunRequest, run_training
    result = run_training(RunRequest(task="full", data="datasets/raccoon", model="glip-t",
                                     output="runs/raccoon-1shot", options={"shots": 1}))

A resumed run (`resume=True`) needs only `output`: the data, prompt, model and settings are read
from the run's `run.json`; anything given explicitly must agree with them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glipcli.checkpoint import config_from_record
from glipcli.data.coco import load_coco
from glipcli.data.dataset_source import resolve_splits
from glipcli.data.splits import SplitPaths
from glipcli.engine.train_config import TrainConfig
from glipcli.engine.trainer import LAYOUT, RUN_FILE, TrainData, Trainer, TrainResult
from glipcli.engine.training_run import has_checkpoint
from glipcli.errors import GlipError, clip, excerpt
from glipcli.io import read_json
from glipcli.modeling.glip import GLIP
from glipcli.prompts.prompt_file import PromptSpec
from glipcli.weights import load_model, resolve_model_source


@dataclass
class RunRequest:
    """task: full | linear-probe | prompt. data / *_ann / *_images: the dataset (Roboflow folder
    and/or explicit files). prompt_file: class texts. model / config / weights: as `glip detect`.
    options: TrainConfig fields given explicitly (others: official defaults, or the run's own
    when resuming)."""

    task: str
    output: str | Path
    data: str | Path | None = None
    train_ann: str | Path | None = None
    train_images: str | Path | None = None
    val_ann: str | Path | None = None
    val_images: str | Path | None = None
    test_ann: str | Path | None = None
    test_images: str | Path | None = None
    prompt_file: str | Path | None = None
    model: str | None = None
    config: str | Path | None = None
    weights: str | Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    cpu: bool = False
    progress: bool = True


def load_training_data(splits: dict[str, SplitPaths]) -> TrainData:
    train = load_coco(splits["train"].ann, splits["train"].images, "train")
    val = test = None
    if "valid" in splits:
        val = load_coco(splits["valid"].ann, splits["valid"].images, "valid", reference=train)
    if "test" in splits:
        test = load_coco(splits["test"].ann, splits["test"].images, "test", reference=train)
    return TrainData(train, val, test)


def _read_run(output: Path) -> dict[str, Any]:
    """The run record, checked for the shape `--resume` relies on (any other is one line)."""
    path = output / RUN_FILE
    if not path.is_file():
        raise GlipError(f"{output}: no training run to resume ({RUN_FILE} is missing)")
    run = read_json(path, "run record")
    shape = {"task": str, "config": dict, "model_config": dict, "data": dict, "source": dict}
    if not isinstance(run, dict):
        raise GlipError(f"{path}: damaged run record (not a JSON object)")
    for key, kind in shape.items():
        if not isinstance(run.get(key), kind):
            raise GlipError(f"{path}: damaged run record ({excerpt(key)} missing or not a {kind.__name__})")
    train = run["data"].get("train")
    if not isinstance(train, dict) or not all(isinstance(train.get(k), str) for k in ("ann", "images")):
        raise GlipError(f"{path}: damaged run record (no training split)")
    for split in ("valid", "test"):
        entry = run["data"].get(split)
        if entry is not None and not (isinstance(entry, dict)
                                      and all(isinstance(entry.get(k), str) for k in ("ann", "images"))):
            raise GlipError(f"{path}: damaged run record (the {split} split)")
    for key in ("model", "config", "weights", "prompt_file"):
        if not isinstance(run["source"].get(key), (str, type(None))):
            raise GlipError(f"{path}: damaged run record (source {excerpt(key)})")
    return run


def _same_path(a: str | Path | None, b: str | Path | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).resolve() == Path(b).resolve()


def _resumed_request(request: RunRequest, run: dict[str, Any]) -> tuple[RunRequest, TrainConfig]:
    if run.get("task") != request.task:
        raise GlipError(f"--resume: {request.output} holds a {excerpt(run.get('task'))} run, "
                        f"not {excerpt(request.task)}")
    config = TrainConfig.from_dict(run["config"]).resumed_with(request.options)
    data = run.get("data") or {}
    given = {"train": (request.train_ann, request.train_images), "valid": (request.val_ann, request.val_images),
             "test": (request.test_ann, request.test_images)}
    if request.data is not None or any(a is not None or b is not None for a, b in given.values()):
        splits = resolve_splits(request.data, train_ann=request.train_ann, train_images=request.train_images,
                                val_ann=request.val_ann, val_images=request.val_images,
                                test_ann=request.test_ann, test_images=request.test_images)
        for split, paths in splits.items():
            stored_split = data.get(split)
            if stored_split is None or not _same_path(stored_split["ann"], paths.ann):
                raise GlipError(f"--resume: the {split} split differs from the run's ({paths.ann})")
    source = run.get("source") or {}
    for key in ("model", "config", "weights", "prompt_file"):
        value = getattr(request, key)
        if value is not None and not (str(value) == str(source.get(key)) or
                                      (key != "model" and _same_path(value, source.get(key)))):
            raise GlipError(f"--resume: the run was started with --{key.replace('_', '-')} {source.get(key)}, "
                            f"not {value}")
    resumed = dataclasses.replace(
        request,
        data=None,
        train_ann=data["train"]["ann"], train_images=data["train"]["images"],
        val_ann=(data.get("valid") or {}).get("ann"), val_images=(data.get("valid") or {}).get("images"),
        test_ann=(data.get("test") or {}).get("ann"), test_images=(data.get("test") or {}).get("images"),
        prompt_file=source.get("prompt_file"), model=source.get("model"), config=source.get("config"),
        weights=source.get("weights"))
    return resumed, config


def _build_model(request: RunRequest, run: dict[str, Any] | None):
    """The GLIP to train. A resumed full / linear-probe run rebuilds it from its checkpoint's
    config (the trainer then loads the checkpoint weights)."""
    if run is not None and request.task != "prompt":
        return GLIP(config_from_record(run.get("model_config"), f"{request.output}/{RUN_FILE}"))
    return load_model(resolve_model_source(request.model, request.weights, request.config))


def run_training(request: RunRequest, **trainer_kwargs: Any) -> TrainResult:
    """Load the data, prompt and model, then train (or resume) as the request says."""
    output = Path(request.output)
    run = None
    inputs = [request.train_ann, request.val_ann, request.test_ann, request.prompt_file, request.weights,
              request.config, request.data]
    if request.resume:
        run = _read_run(output)
        LAYOUT.check(output, resume=True, inputs=inputs)
        try:
            request, config = _resumed_request(request, run)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise GlipError(f"{output / RUN_FILE}: damaged run record "
                            f"({type(exc).__name__}: {clip(exc, 120)})") from None
        if not has_checkpoint(output):
            run = None  # stopped before its first checkpoint: the Trainer starts it afresh (and says so)
    else:
        LAYOUT.check(output, inputs=inputs)
        config = TrainConfig(task=request.task, **{k: v for k, v in request.options.items() if v is not None})
    splits = resolve_splits(request.data, train_ann=request.train_ann, train_images=request.train_images,
                            val_ann=request.val_ann, val_images=request.val_images,
                            test_ann=request.test_ann, test_images=request.test_images)
    data = load_training_data(splits)
    spec = None
    if request.prompt_file is not None:
        spec = PromptSpec.from_yaml(request.prompt_file)
    model = _build_model(request, run)
    source = {"model": request.model,
              "config": None if request.config is None else str(Path(request.config).resolve()),
              "weights": None if request.weights is None else str(Path(request.weights).resolve()),
              "prompt_file": None if request.prompt_file is None else str(Path(request.prompt_file).resolve())}
    trainer = Trainer(model, data, config, output, prompt_spec=spec, resume=request.resume, cpu=request.cpu,
                      progress=request.progress, run_info={"source": source}, **trainer_kwargs)
    return trainer.fit()
