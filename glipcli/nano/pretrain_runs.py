"""Starting and resuming pre-training runs from what a user typed (the API under `glip pretrain`).

    from glipcli.nano.pretrain_runs import PretrainRequest, run_pretraining
    result = run_pretraining(PretrainRequest(output="runs/pretrain/world", options={"steps": 1000}))

Without `data` the source is the generated world (`world_images` scenes, seeded by the run's
seed). A resumed run (`resume=True`) needs only `output`: the source, model and settings are
read from the run's run.json; anything given explicitly must agree with them. `export` writes
the shippable weights (`glipcli.nano.export.export_weights`) once the run has finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glipcli.checkpoint import config_from_record
from glipcli.engine.training_run import has_checkpoint
from glipcli.errors import GlipError
from glipcli.io import read_json
from glipcli.modeling.glip import GLIP
from glipcli.nano.export import export_weights
from glipcli.nano.pretrain import LAYOUT, RUN_FILE, Pretrainer, PretrainResult
from glipcli.nano.pretrain_config import PretrainConfig
from glipcli.nano.pretrain_data import CocoGroundingSource, PretrainSource, WorldSource
from glipcli.nano.pretrain_model import build_pretrain_model
from glipcli.nano.synthetic import WORLD_EDITIONS, WorldConfig
from glipcli.outputs import OutputGuard

WORLD_IMAGES = 100_000  # scenes in the generated world's stream (an epoch), by default


@dataclass
class PretrainRequest:
    """output: the run folder. data: a COCO detection (+ grounding) folder, or None for the
    generated world of `world_images` scenes. preset / init: the architecture from scratch, or
    weights to start from (default: nano). options: PretrainConfig fields given explicitly
    (others: defaults, or the run's own when resuming). export: where to write the shippable
    weights when the run has finished (`overwrite`: replacing a file there)."""

    output: str | Path
    data: str | Path | None = None
    world_images: int | None = None
    world_edition: int | None = None
    preset: str | None = None
    init: str | Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    export: str | Path | None = None
    overwrite: bool = False
    cpu: bool = False
    progress: bool = True


def read_run(output: Path) -> dict[str, Any]:
    """The run record of a pre-training run, checked for the shape `--resume` relies on."""

    path = Path(output) / RUN_FILE
    if not path.is_file():
        raise GlipError(f"{output}: no pre-training run to resume ({RUN_FILE} is missing)")
    run = read_json(path, "run record")
    if not isinstance(run, dict) or run.get("kind") != "glip-pretrain":
        raise GlipError(f"{path}: not a glip pre-training run")
    for key in ("config", "model_config", "source"):
        if not isinstance(run.get(key), dict):
            raise GlipError(f"{path}: damaged run record ({key!r} missing or not an object)")
    return run


def new_source(data: Path | None, world_images: int | None, seed: int, world_edition: int | None = None
               ) -> PretrainSource:
    """The source of a new run: `data` (a COCO folder), else the generated world (edition 2 unless
    `world_edition` says otherwise)."""
    if data is not None:
        if world_images is not None or world_edition is not None:
            raise GlipError("--world-images and --world-edition apply to the generated world, not to --data")
        return CocoGroundingSource(data)
    if world_edition is not None and world_edition not in WORLD_EDITIONS:
        raise GlipError(f"--world-edition must be one of {', '.join(map(str, WORLD_EDITIONS))} (got {world_edition})")
    return WorldSource(seed=seed, images=world_images if world_images is not None else WORLD_IMAGES,
                       config=WORLD_EDITIONS[world_edition or 2])


def resumed_source(run: dict, data: Path | None, world_images: int | None) -> PretrainSource:
    """The source a run was started on (as its run.json describes it); what the user gave must agree."""
    described = run.get("source") or {}
    if described.get("kind") == "coco":
        if data is not None and (data / "train" / "_annotations.coco.json").resolve() != Path(described["ann_file"]):
            raise GlipError(f"--resume: the run was pre-trained on {described['ann_file']}, not {data}")
        return CocoGroundingSource(ann_file=described["ann_file"], grounding_file=described.get("grounding_file"))
    if data is not None:
        raise GlipError("--resume: the run was pre-trained on the generated world, not on --data")
    if world_images is not None and world_images != described.get("images"):
        raise GlipError(f"--resume: the run was started with --world-images {described.get('images')}")
    return WorldSource(seed=described["seed"], images=described["images"],
                       config=WorldConfig.from_record(described.get("world") or {}),
                       captions_per_image=described.get("captions_per_image", 2))


def _resumed(request: PretrainRequest, run: dict[str, Any], given: dict[str, Any]):
    """(config, source, model, text encoder, run info) of a resumed run."""
    output = Path(request.output)
    config = PretrainConfig.from_dict(run["config"]).resumed_with(given)
    data = None if request.data is None else Path(request.data)
    try:
        source = resumed_source(run, data, request.world_images)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GlipError(f"{output}/run.json: damaged run record (source: {type(exc).__name__} {exc})") from None
    if request.preset is not None or request.init is not None:
        raise GlipError("--resume takes the model from the run's checkpoint: leave out --preset and --init")
    if has_checkpoint(output):
        model = GLIP(config_from_record(run.get("model_config"), "the run's run.json"))
        text_encoder = run.get("text_encoder")
    else:  # stopped before its first checkpoint: the Pretrainer starts it afresh (and says so)
        started = run.get("model") or {}
        model, text_encoder = build_pretrain_model(started.get("preset") or "nano", init=started.get("init"),
                                                   seed=config.seed)
    run_info = {key: run[key] for key in ("model",) if key in run}
    return config, source, model, text_encoder, run_info


def _new(request: PretrainRequest, given: dict[str, Any]):
    """(config, source, model, text encoder, run info) of a new run."""
    config = PretrainConfig(**given)
    if request.preset is not None and request.init is not None:
        raise GlipError("give --preset (from scratch) or --init (from weights), not both")
    source = new_source(None if request.data is None else Path(request.data), request.world_images, config.seed,
                        request.world_edition)
    init = None if request.init is None else Path(request.init)
    model, text_encoder = build_pretrain_model(request.preset or "nano", init=init, seed=config.seed)
    run_info = {"model": {"preset": None if init is not None else (request.preset or "nano"),
                          "init": None if init is None else str(init.resolve())}}
    return config, source, model, text_encoder, run_info


def run_pretraining(request: PretrainRequest, **pretrainer_kwargs: Any) -> PretrainResult:
    """Check the folder, build (or read back) the source, model and settings, pre-train (or
    resume), then export when asked. The result's `exported` is the written file, if any."""
    output = Path(request.output)
    inputs = [request.data, request.init, request.export]
    run = read_run(output) if request.resume else None
    LAYOUT.check(output, resume=request.resume, inputs=inputs)
    if request.export is not None:
        OutputGuard(overwrite=request.overwrite, inputs=inputs[:2]).file(request.export, "--export")
    given = {k: v for k, v in request.options.items() if v is not None}
    if run is not None:
        config, source, model, text_encoder, run_info = _resumed(request, run, given)
    else:
        config, source, model, text_encoder, run_info = _new(request, given)
    trainer = Pretrainer(model, source, config, output, text_encoder=text_encoder, resume=request.resume,
                         cpu=request.cpu, progress=request.progress, run_info=run_info, **pretrainer_kwargs)
    result = trainer.fit()
    if result.main_process and request.export is not None:
        result.exported = export_run(trainer, result, request.export)
    return result


def export_run(trainer: Pretrainer, result: PretrainResult, path: str | Path) -> Path:
    """Write the finished run's shippable weights to `path`, with a summary (and the options that
    replay the run step for step) in the metadata."""
    state, config = result.state, trainer.config
    replay = f"--seed {config.seed} --steps {state.global_step} --schedule-steps {state.horizon}"
    described = trainer.source.describe()
    if described.get("kind") == "world":
        world = WorldConfig.from_record(described.get("world") or {})
        replay += "".join(f" --world-edition {n}" for n, edition in WORLD_EDITIONS.items() if edition == world)
    if not state.finished:
        raise GlipError(f"{result.output_dir}: the run has not finished; nothing exported")
    summary = {"steps": state.global_step, "images": state.samples, "train_seconds": round(state.train_seconds, 1),
               "seed": config.seed, "stop_reason": state.stop_reason, "schedule_steps": state.horizon,
               "source": described, "recipe": config.to_dict(), "replay": replay}
    return export_weights(trainer.model, path, extra_metadata={"glip_pretrain": json.dumps(summary)})
