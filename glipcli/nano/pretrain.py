"""`glip pretrain`: GLIP pre-training on detection + grounding data, with a frozen text encoder.

    from glipcli.nano.pretrain import PretrainConfig, Pretrainer, build_pretrain_model
    from glipcli.nano.pretrain_data import WorldSource
    model, text_encoder = build_pretrain_model("nano", seed=0)
    result = Pretrainer(model, WorldSource(seed=0), PretrainConfig(minutes=60), "runs/nano",
                        text_encoder=text_encoder).fit()

The recipe (official GLIP pre-training ingredients, scaled to a CPU):

- data: detection samples (per-image captions of positive + sampled negative category names)
  mixed with grounding samples (captions with phrase boxes), `glipcli.nano.pretrain_data`;
  the official multi-scale resize (scaled to the model's test size) and horizontal flip;
- loss: `GLIPLoss` (ATSS, token focal loss, GIoU, centerness);
- text encoder: frozen and in eval mode (its parameters never change, so shipped weights can
  leave it out: `export_weights`). Each distinct caption is encoded once, alone and without
  gradients, and its features are kept in a bounded LRU cache (`text_cache` captions);
- regularisation: none by default (`dropout=False`): the generated world never repeats a sample,
  so dropout, DropPath and attention dropout would only slow learning down (`dropout=True` keeps
  the architecture's rates, the official setting);
- optimiser: AdamW, weight decay 0.05 (biases: lr x2, no decay, official `make_optimizer`),
  gradient-norm clip 1.0; linear warm-up from `warmup_factor`, then cosine decay to
  `min_lr_factor` (or the official multi-step schedule: x0.1 at 67% and 89% of the run);
- length: `steps`, `epochs` (passes over the source) or a wall-clock budget `minutes`. With a
  budget alone the schedule's horizon is estimated once, after `calibration_steps` steps, from
  the measured step time (and stored: a resumed run keeps it). The run stops at the horizon or
  when the budget would be exceeded by another step, whichever comes first, and saves.

Output folder:

    run.json             settings, data source, architecture, text encoder (what --resume reads)
    log.jsonl            start, calibration, steps (every log_every), checkpoints, stop, end
    checkpoints/         the latest resumable checkpoint (`glipcli.engine.training_state` layout:
                         full model, optimiser, schedule state, step, torch generator states)
    model.safetensors    the final weights (without the text encoder when it is the packaged
                         all-MiniLM-L6-v2; `glip detect --weights` loads either)

Checkpoints are written every `checkpoint_minutes`, at a stop and on Ctrl-C (single process).
Resuming continues exactly: the sample order and every random choice of a sample are functions
of (seed, epoch, position), the checkpoint holds the generator states, and text features are
computed per caption alone, so a cache hit gives the same numbers as a miss.

accelerate places the model and runs mixed precision and data parallelism (`accelerate launch
-m glipcli.cli.main pretrain ...`): `batch_size` is the images of a step over all processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from glipcli.checkpoint import config_metadata, load_checkpoint, save_safetensors
from glipcli.config import get_preset
from glipcli.data.epoch_batches import EpochBatches
from glipcli.engine import training_state as ckpt
from glipcli.engine.divergence import DivergenceCheck, check_finite
from glipcli.engine.process import GracefulInterrupt, make_accelerator
from glipcli.engine.trainable import param_groups
from glipcli.errors import GlipError, clip
from glipcli.io import atomic_write, finite_or_null, json_text, read_json
from glipcli.losses import GLIPLoss, TrainTarget
from glipcli.modeling.glip import GLIP, GLIPOutputs
from glipcli.modeling.language import TextFeatures
from glipcli.nano.minilm import (MINILM_L6, PACKAGE, PACKAGE_VERSION, WEIGHTS_SHA256, check_files, load_minilm,
                                 locate_minilm, minilm_available, minilm_state_dict, without_text_encoder)
from glipcli.nano.pretrain_data import (PretrainBatch, PretrainCollate, PretrainDataset, PretrainSource, TextSettings,
                                        with_steps)
from glipcli.outputs import OutputGuard
from glipcli.weights import ModelSource, load_model

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
FINAL_MODEL = "model.safetensors"
RUN_FOLDER_FILES = (RUN_FILE, LOG_FILE, FINAL_MODEL, ckpt.CHECKPOINTS)
SCHEDULES = ("cosine", "step")
MIXED_PRECISION = ("no", "bf16", "fp16")
STEP_MILESTONES = (0.67, 0.89)  # official GLIP pre-training SOLVER.STEPS, as fractions of the run
# Settings that may differ when a run is resumed (they do not change what is computed).
RESUME_FREE = ("num_workers", "checkpoint_minutes", "log_every", "text_cache")
EXPORT_LIMIT_BYTES = 15_000_000


@dataclass(frozen=True)
class PretrainConfig:
    """Pre-training settings (see the module docstring). At least one of steps, epochs, minutes."""

    seed: int = 0
    steps: int | None = None
    epochs: int | None = None
    minutes: float | None = None
    schedule_steps: int | None = None
    batch_size: int = 8
    lr: float = 4e-4
    weight_decay: float = 0.05
    bias_lr_factor: float = 2.0
    bias_weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 100
    warmup_factor: float = 0.001
    min_lr_factor: float = 0.01
    grad_clip: float = 1.0
    grounding_ratio: float = 0.5
    max_labels: int = 12
    hard_negatives: float = 0.5
    attribute_labels: float = 0.25
    augment: bool = True
    dropout: bool = False
    calibration_steps: int = 20
    mixed_precision: str = "no"
    checkpoint_minutes: float = 10.0
    log_every: int = 10
    text_cache: int = 1024
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None and self.minutes is None and self.schedule_steps is None:
            raise GlipError("say how long to pre-train: --steps N, --epochs N or --minutes M")
        for name, low in (("seed", 0), ("steps", 1), ("epochs", 1), ("schedule_steps", 1), ("batch_size", 1),
                          ("warmup_steps", 0),
                          ("max_labels", 1), ("calibration_steps", 1), ("log_every", 1), ("text_cache", 0),
                          ("num_workers", 0)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise GlipError(f"{_flag(name)} must be a whole number (got {value!r})")
            if value < low:
                raise GlipError(f"{_flag(name)} must be at least {low} (got {value})")
        for name in ("minutes", "lr", "weight_decay", "bias_lr_factor", "bias_weight_decay", "warmup_factor",
                     "min_lr_factor", "grad_clip", "checkpoint_minutes"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise GlipError(f"{_flag(name)} must be a number >= 0 (got {value!r})")
        if self.seed is not None and self.seed > 2**32 - 1:
            raise GlipError(f"--seed must be a whole number from 0 to {2**32 - 1} (got {self.seed})")
        if self.minutes is not None and self.minutes <= 0:
            raise GlipError(f"--minutes must be more than 0 (got {self.minutes})")
        if self.schedule not in SCHEDULES:
            raise GlipError(f"--schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if self.mixed_precision not in MIXED_PRECISION:
            raise GlipError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)} "
                            f"(got {self.mixed_precision!r})")
        self.text_settings()  # validates the data settings

    def text_settings(self, max_tokens: int = 256) -> TextSettings:
        return TextSettings(grounding_ratio=self.grounding_ratio, max_labels=self.max_labels,
                            hard_negative_share=self.hard_negatives, attribute_share=self.attribute_labels,
                            max_tokens=max_tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PretrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def differences(self, other: "PretrainConfig") -> list[str]:
        """Settings (other than RESUME_FREE) in which `other` differs, as '--flag mine (given: theirs)'."""
        return [f"{_flag(f.name)} {getattr(self, f.name)} (given: {getattr(other, f.name)})"
                for f in dataclasses.fields(self)
                if f.name not in RESUME_FREE and getattr(self, f.name) != getattr(other, f.name)]


def _flag(name: str) -> str:
    return "--" + {"hard_negatives": "hard-negatives"}.get(name, name.replace("_", "-"))


def lr_factor(step: int, horizon: int | None, cfg: PretrainConfig) -> float:
    """The learning-rate multiplier of optimiser step `step` (0-based): linear warm-up from
    `warmup_factor` over `warmup_steps`, then cosine to `min_lr_factor` at `horizon` (or x0.1 at
    each official milestone). Before the horizon is known (a time budget still calibrating) the
    post-warm-up factor is 1."""
    if step < cfg.warmup_steps:
        alpha = step / cfg.warmup_steps
        return cfg.warmup_factor * (1.0 - alpha) + alpha
    if horizon is None:
        return 1.0
    if cfg.schedule == "step":
        return 0.1 ** sum(step >= int(m * horizon) for m in STEP_MILESTONES)
    span = max(1, horizon - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class PretrainState:
    """Where pre-training stands (serialised into every checkpoint)."""

    global_step: int = 0
    epoch: int = 0  # epochs completed
    step: int = 0  # steps done in the current epoch
    horizon: int | None = None  # the schedule's length in steps (None: still calibrating)
    train_seconds: float = 0.0  # wall time spent training, over all sessions
    samples: int = 0
    skipped_steps: int = 0
    finished: bool = False
    stop_reason: str | None = None


@dataclass
class PretrainStep:
    global_step: int
    losses: dict[str, float]
    lr: float
    seconds: float


@dataclass
class PretrainResult:
    output_dir: Path
    state: PretrainState
    model_path: Path | None
    main_process: bool = True


# -- the model ---------------------------------------------------------------------------------------
def build_pretrain_model(preset: str = "nano", init: str | Path | None = None, seed: int = 0
                         ) -> tuple[GLIP, dict[str, Any]]:
    """The model to pre-train and a description of its text encoder.

    Without `init`: the preset's architecture, randomly initialised (seeded), with the packaged
    all-MiniLM-L6-v2 as text encoder (the preset must have its sizes: `nano`). With `init`: a
    glip checkpoint (its architecture from the file; a nano export gets MiniLM from the package)."""
    if init is not None:
        path = Path(init)
        if not path.is_file():
            raise GlipError(f"{path}: no such checkpoint file")
        model = load_model(ModelSource(None, path))
        return model, {"kind": "checkpoint", "path": str(path.resolve()), "minilm": _is_minilm(model)}
    cfg = get_preset(preset)
    if cfg.language != MINILM_L6:
        raise GlipError(f"pre-training needs a pre-trained text encoder: the {cfg.name} preset's is not "
                        "all-MiniLM-L6-v2 (use --preset nano, or --init a checkpoint to start from)")
    torch.manual_seed(seed)
    model = GLIP(cfg)
    files = load_minilm(model)
    return model, {"kind": "all-MiniLM-L6-v2", "package": PACKAGE, "version": files.version,
                   "sha256": WEIGHTS_SHA256, "minilm": True}


def _is_minilm(model: GLIP) -> bool:
    """Whether the model's text encoder holds exactly the packaged all-MiniLM-L6-v2 weights."""
    if model.cfg.language != MINILM_L6 or not minilm_available():
        return False
    files = locate_minilm()
    check_files(files)
    reference = minilm_state_dict(files)
    own = model.language.bert.state_dict()
    weights = {k: v for k, v in reference.items() if k in own or not k.startswith("embeddings.")}
    return bool(weights) and all(k in own and torch.equal(own[k].detach().cpu().to(v.dtype), v)
                                 for k, v in weights.items())


def disable_dropout(model: nn.Module) -> int:
    """Turn off every stochastic regulariser of `model` (dropout, DropPath, DropBlock, attention
    dropout) in place; returns how many were on. Pre-training on a stream that never repeats a
    sample gains nothing from them and they cost time; the model's config (what fine-tuning uses
    later) is unchanged."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
        for name in ("drop_prob", "dropout"):
            value = getattr(module, name, None)
            if isinstance(value, float) and not isinstance(module, nn.Dropout):
                changed += value > 0
                setattr(module, name, 0.0)
    return changed


def freeze_text_encoder(model: GLIP) -> None:
    model.language.eval()
    for p in model.language.parameters():
        p.requires_grad_(False)


def trainable_parameters(model: GLIP) -> list[tuple[str, nn.Parameter]]:
    """Everything but the text encoder and the unused `cls_logits` (GLIP scores with token logits)."""
    out = []
    for name, p in model.named_parameters():
        train = not name.startswith(("language.", "head.cls_logits."))
        p.requires_grad_(train)
        if train:
            out.append((name, p))
    return out


def optimizer_groups(named: list[tuple[str, nn.Parameter]], cfg: PretrainConfig) -> list[dict]:
    """The official `make_optimizer` groups (biases: lr x bias_lr_factor, bias_weight_decay)."""
    from types import SimpleNamespace

    rules = SimpleNamespace(lr=cfg.lr, language_lr=cfg.lr, weight_decay=cfg.weight_decay,
                            bias_lr_factor=cfg.bias_lr_factor, bias_weight_decay=cfg.bias_weight_decay)
    groups = param_groups(named, rules)
    for group in groups:
        group["base_lr"] = group["lr"]
    return groups


class TextEncoderCache:
    """Frozen text features per distinct caption (token ids), encoded alone, least recently used
    dropped beyond `capacity` captions."""

    def __init__(self, model: GLIP, capacity: int, device: torch.device):
        self.model = model
        self.capacity = capacity
        self.device = device
        self._store: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)[None]
        return self.model.encode_text(ids, torch.ones_like(ids)).hidden[0].float()

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        key = tuple(ids.tolist())
        found = self._store.get(key)
        if found is not None:
            self.hits += 1
            self._store.move_to_end(key)
            return found
        self.misses += 1
        value = self._encode(ids)
        if self.capacity > 0:
            self._store[key] = value
            if len(self._store) > self.capacity:
                self._store.popitem(last=False)
        return value

    def batch(self, ids_list: list[torch.Tensor]) -> TextFeatures:
        """Padded `TextFeatures` [B, L_max] (padded positions zero and masked)."""
        rows = [self.hidden(ids) for ids in ids_list]
        length = max(r.shape[0] for r in rows)
        width = rows[0].shape[1]
        hidden = rows[0].new_zeros((len(rows), length, width))
        mask = torch.zeros((len(rows), length), dtype=torch.long, device=hidden.device)
        for i, r in enumerate(rows):
            hidden[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = 1
        counts = mask.sum(-1, keepdim=True).to(hidden.dtype)
        return TextFeatures(hidden=hidden, embedded=hidden, mask=mask, aggregate=hidden.sum(1) / counts)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class _VisionHead(nn.Module):
    """What the optimiser trains through: GLIP given ready text features (tensors only, for DDP)."""

    def __init__(self, glip: GLIP):
        super().__init__()
        self.glip = glip

    def forward(self, images, hidden, mask, aggregate) -> GLIPOutputs:
        return self.glip(images, TextFeatures(hidden=hidden, embedded=hidden, mask=mask, aggregate=aggregate))


# -- the loop ----------------------------------------------------------------------------------------
class Pretrainer:
    """Pre-trains `model` (in place) on `source` as `config` says, writing into `output_dir`.

    text_encoder: what run.json records about the text encoder (`build_pretrain_model`).
    resume: continue the run in `output_dir` (`config` must be the run's). step_callback: called
    after every optimiser step (tests interrupt a run through it)."""

    def __init__(self, model: GLIP, source: PretrainSource, config: PretrainConfig, output_dir: str | Path, *,
                 text_encoder: dict[str, Any] | None = None, resume: bool = False, accelerator=None,
                 cpu: bool = False, progress: bool = True, console: Console | None = None,
                 run_info: dict[str, Any] | None = None,
                 step_callback: Callable[[PretrainStep], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.source = source
        self.config = config
        self.output_dir = Path(output_dir)
        self.text_encoder = dict(text_encoder or {"kind": "model"})
        self.resume = resume
        self.run_info = dict(run_info or {})
        self.step_callback = step_callback
        self.console = console or Console(stderr=True)
        self.show_progress = progress
        self.clock = clock
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config.mixed_precision, cpu)
        self.state = PretrainState()
        self._interrupt = GracefulInterrupt(self._say)
        self._divergence = DivergenceCheck()
        self._restarted = False  # --resume of a run that stopped before its first checkpoint
        self._at_step_boundary = False

    # -- files ---------------------------------------------------------------------------------------
    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def _log(self, event: str, **fields: Any) -> None:
        if not self.main:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json_text(finite_or_null(record), self.output_dir / LOG_FILE, default=_json_default) + "\n")

    def _say(self, text: str) -> None:
        if self.main:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def _check_output_dir(self) -> None:
        """As the fine-tuning runs (`glipcli.engine.trainer.check_run_folder`): a new run refuses a
        folder holding any file it writes; `--resume` of a run stopped before its first checkpoint
        starts it afresh, saying so."""
        out = self.output_dir
        if self.resume and ckpt.latest(out) is None:
            if not (out / RUN_FILE).is_file():
                raise GlipError(f"{out}: no pre-training run to resume ({RUN_FILE} is missing)")
            self.resume = False
            self._restarted = True
        check_pretrain_folder(out, resume=self.resume or self._restarted)

    def run_record(self) -> dict[str, Any]:
        return {"kind": "glip-pretrain", "config": self.config.to_dict(),
                "model_config": self.model.cfg.to_dict(), "text_encoder": self.text_encoder,
                "source": self.source.describe(), "categories": list(self.source.categories),
                "processes": self.accelerator.num_processes, **self.run_info}

    # -- set-up --------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, acc = self.config, self.accelerator
        model = self.model
        if acc.num_processes > 1 and cfg.batch_size % acc.num_processes:
            raise GlipError(f"--batch-size {cfg.batch_size} must divide evenly over {acc.num_processes} processes")
        model.to(acc.device)
        named = trainable_parameters(model)
        freeze_text_encoder(model)
        if not cfg.dropout:
            disable_dropout(model)
        self.trainable = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(optimizer_groups(named, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.module, self.optimizer = acc.prepare(_VisionHead(model), self.optimizer)
        reduce = (lambda t: acc.reduce(t, "mean")) if acc.num_processes > 1 else None
        self.loss_fn = GLIPLoss(model.cfg, reduce_mean=reduce)
        self.text = TextEncoderCache(model, cfg.text_cache, acc.device)
        indices = self.source.usable_indices() if hasattr(self.source, "usable_indices") else range(len(self.source))
        self.dataset = PretrainDataset(self.source, model.cfg.input, cfg.text_settings(model.cfg.language.max_query_len),
                                       cfg.seed, augment=cfg.augment)
        self.collate = PretrainCollate(model.cfg.input.size_divisible)
        self.batches = EpochBatches.of(list(indices), 1, cfg.batch_size // acc.num_processes, cfg.seed,
                                       acc.num_processes, acc.process_index)
        if cfg.steps is not None:
            self.state.horizon = cfg.steps
        if cfg.schedule_steps is not None:  # the schedule's length, whatever stops the run
            self.state.horizon = cfg.schedule_steps
        if cfg.epochs is not None:
            by_epochs = cfg.epochs * len(self.batches)
            self.state.horizon = by_epochs if self.state.horizon is None else min(self.state.horizon, by_epochs)

    def _set_mode(self) -> None:
        self.model.train()
        self.model.language.eval()

    # -- checkpoints ---------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        acc = self.accelerator
        check_finite(self.trainable, "the checkpoint")
        start = time.perf_counter()
        name = f"step-{self.state.global_step:07d}"
        if self.main:
            tmp = ckpt.prepare_temporary(self.output_dir, name)
        acc.wait_for_everyone()
        tmp = ckpt.temporary_dir(self.output_dir, name)
        ckpt.save_tensors(tmp / f"rng-{acc.process_index}.safetensors", ckpt.rng_tensors())
        if self.main:
            save_safetensors(self.model, tmp / ckpt.MODEL_FILE)
            state = {**dataclasses.asdict(self.state), "config": self.config.to_dict(),
                     "processes": acc.num_processes, "categories": list(self.source.categories),
                     "source_images": len(self.source)}
            if acc.scaler is not None:
                state["grad_scaler"] = acc.scaler.state_dict()
            ckpt.save_state(tmp / ckpt.STATE_FILE, state, self.optimizer.state_dict())
        acc.wait_for_everyone()
        if self.main:
            ckpt.commit(self.output_dir, name, {"global_step": self.state.global_step})
            self._log("checkpoint", name=name, global_step=self.state.global_step,
                      seconds=round(time.perf_counter() - start, 3))
        acc.wait_for_everyone()
        self._save_seconds = time.perf_counter() - start
        self._last_checkpoint = self.clock()

    def _load_checkpoint(self) -> None:
        acc = self.accelerator
        folder = ckpt.latest(self.output_dir)
        saved, optimizer_state = ckpt.load_state(folder / ckpt.STATE_FILE)
        stored = PretrainConfig.from_dict(saved["config"])
        differences = stored.differences(self.config)
        if differences:
            raise GlipError(f"--resume: {self.output_dir} was pre-trained with " + "; ".join(differences)
                            + " (a resumed run continues with its own settings)")
        if saved.get("processes", 1) != acc.num_processes:
            raise GlipError(f"--resume: the run used {saved.get('processes')} processes, this one "
                            f"{acc.num_processes} (the batch order depends on it)")
        if saved.get("categories") != list(self.source.categories) or saved.get("source_images") != len(self.source):
            raise GlipError("--resume: the pre-training data differ from the run's")
        load_checkpoint(self.model, folder / ckpt.MODEL_FILE)
        self.optimizer.load_state_dict(optimizer_state)
        fields = {f.name for f in dataclasses.fields(PretrainState)}
        self.state = PretrainState(**{k: v for k, v in saved.items() if k in fields})
        if acc.scaler is not None and "grad_scaler" in saved:
            acc.scaler.load_state_dict(saved["grad_scaler"])
        rng, _ = ckpt.load_tensors(folder / f"rng-{acc.process_index}.safetensors")
        ckpt.restore_rng(rng)

    # -- training ------------------------------------------------------------------------------------
    def fit(self) -> PretrainResult:
        acc = self.accelerator
        self._check_output_dir()
        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        torch.manual_seed(self.config.seed + acc.process_index)
        self._setup()
        if self.resume:
            try:
                self._load_checkpoint()
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a state of another shape
                raise GlipError(f"{ckpt.latest(self.output_dir)}: damaged checkpoint ({type(exc).__name__}: "
                                f"{clip(exc, 120)}); delete checkpoints/ to start the run afresh") from None
            if self.state.finished:
                self._say(f"{self.output_dir}: pre-training has finished ({self.state.stop_reason}); nothing to resume")
                return self._result()
            self._log("resume", global_step=self.state.global_step, train_seconds=self.state.train_seconds)
            self._say(f"resuming at step {self.state.global_step}")
        else:
            if self._restarted:
                self._say(f"note: {self.output_dir} holds no checkpoint yet (the run stopped before its first one): "
                          "starting it afresh with its own settings")
            self._start_files()
        self._session_start = self.clock()
        self._session_seconds_before = self.state.train_seconds
        self._last_checkpoint = self._session_start
        self._save_seconds = 2.0
        self._interrupt.install(self.accelerator.num_processes)
        try:
            self._train()
            return self._finish()
        except KeyboardInterrupt:
            if acc.num_processes == 1 and self._at_step_boundary:
                self._update_time()
                self._save_checkpoint()
                self._log("interrupted", global_step=self.state.global_step)
                self._say(f"interrupted at step {self.state.global_step}; checkpoint saved, continue with "
                          f"--resume --output {self.output_dir}")
            else:
                self._say(f"interrupted; continue from the last checkpoint with --resume --output {self.output_dir}")
            raise
        finally:
            self._interrupt.restore()

    def _start_files(self) -> None:
        if not self.main:
            return
        text = json_text(self.run_record(), self.output_dir / RUN_FILE, indent=2, default=_json_default) + "\n"
        atomic_write(self.output_dir / RUN_FILE, lambda p: p.write_text(text))
        cfg = self.config
        trainable = sum(p.numel() for p in self.trainable)
        self._log("start", config=cfg.to_dict(), source=self.source.describe(), text_encoder=self.text_encoder,
                  trainable_parameters=trainable, steps_per_epoch=len(self.batches), horizon=self.state.horizon,
                  device=str(self.accelerator.device), processes=self.accelerator.num_processes,
                  threads=torch.get_num_threads(), **self.run_info)
        length = [f"{cfg.steps} steps" if cfg.steps else None, f"{cfg.epochs} epochs" if cfg.epochs else None,
                  f"{cfg.minutes:g} minutes" if cfg.minutes else None]
        self._say(f"pre-training {self.model.cfg.name}: {trainable / 1e6:.2f}M trainable parameters, "
                  f"{len(self.source)} source images ({len(self.source.categories)} categories), batch "
                  f"{cfg.batch_size}, for {' / '.join(x for x in length if x)}")

    def _update_time(self) -> None:
        self.state.train_seconds = self._session_seconds_before + (self.clock() - self._session_start)

    def _budget_left(self) -> float | None:
        if self.config.minutes is None:
            return None
        return self.config.minutes * 60.0 - self.state.train_seconds

    def _train(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        cfg = self.config
        self._window: list[dict[str, float]] = []
        self._calibration: list[float] = []
        with Progress(TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=self.console,
                      disable=not (self.show_progress and self.main)) as progress:
            task = progress.add_task("", total=self.state.horizon, completed=self.state.global_step, loss="-",
                                     rate="")
            while True:
                if self._should_stop(before_step=True):
                    return
                batches = with_steps(self.batches.batches(self.state.epoch, start=self.state.step), self.state.step)
                loader = DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collate,
                                    num_workers=cfg.num_workers, generator=torch.Generator(), pin_memory=False)
                self._set_mode()
                self._at_step_boundary = True
                step_start = self.clock()
                for batch in loader:
                    self._at_step_boundary = False
                    losses = self._step(batch)
                    self.state.step += 1
                    self.state.global_step += 1
                    self.state.samples += len(batch.indices) * self.accelerator.num_processes
                    self._at_step_boundary = True
                    now = self.clock()
                    seconds = now - step_start
                    step_start = now
                    self._update_time()
                    self._after_step(batch, losses, seconds, progress, task)
                    if self._should_stop(before_step=False):
                        return
                    step_start = self.clock()  # checkpoint time is not step time
                self._at_step_boundary = False
                self.state.epoch += 1
                self.state.step = 0

    def _should_stop(self, before_step: bool) -> bool:
        """Horizon reached, time budget spent, or a stop requested (after a step)."""
        st = self.state
        if self.config.steps is not None and st.global_step >= self.config.steps:
            st.stop_reason, st.finished = st.stop_reason or "steps", True
            return True
        if st.horizon is not None and st.global_step >= st.horizon:
            st.stop_reason = st.stop_reason or ("steps" if self.config.steps is not None and st.horizon == self.config.steps
                                                else "epochs" if self.config.epochs is not None else "schedule")
            st.finished = True
            return True
        left = self._budget_left()
        if left is not None:
            per_step = self._mean_step_seconds()
            out_of_time = left <= 0 or (per_step is not None and left < per_step + self._save_seconds)
            if self._agree(out_of_time):
                st.stop_reason, st.finished = "time budget", True
                return True
        if self._interrupt.stop_requested and not before_step:
            raise KeyboardInterrupt
        return False

    def _mean_step_seconds(self) -> float | None:
        recent = self._calibration[-50:]
        return sum(recent) / len(recent) if recent else None

    def _after_step(self, batch: PretrainBatch, losses: dict[str, float], seconds: float, progress, task) -> None:
        cfg, st = self.config, self.state
        self._calibration.append(seconds)
        if st.horizon is None and cfg.minutes is not None:
            measured = self._calibration[2:]  # the first steps include one-off set-up costs
            if len(measured) >= cfg.calibration_steps:
                per_step = sum(measured) / len(measured)
                left = cfg.minutes * 60.0 - st.train_seconds
                saves = 1 + (int(left // (cfg.checkpoint_minutes * 60.0)) if cfg.checkpoint_minutes > 0 else 0)
                st.horizon = st.global_step + max(0, int((left - saves * self._save_seconds) / per_step))
                st.horizon = int(self._agree(st.horizon))
                self._log("calibration", global_step=st.global_step, seconds_per_step=round(per_step, 4),
                          horizon=st.horizon, images_per_second=round(cfg.batch_size / per_step, 3))
                self._say(f"{per_step:.2f} s per step ({cfg.batch_size / per_step:.1f} images/s): the "
                          f"{cfg.minutes:g}-minute budget fits {st.horizon} steps; the schedule ends there")
                progress.update(task, total=st.horizon)
        total = sum(losses.values())
        cpu = time.process_time()
        cpu_seconds, self._cpu_mark = cpu - getattr(self, "_cpu_mark", cpu), cpu
        self._window.append({**losses, "loss": total, "seconds": seconds, "cpu_seconds": cpu_seconds,
                             "detection": sum(k == "detection" for k in batch.kinds)})
        lr = self.optimizer.param_groups[0]["lr"]
        if st.global_step % cfg.log_every == 0 or (st.horizon is not None and st.global_step >= st.horizon):
            window, self._window = self._window, []
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0] if k != "detection"}
            rate = cfg.batch_size / mean["seconds"] if mean["seconds"] > 0 else 0.0
            self._log("step", global_step=st.global_step, epoch=st.epoch + 1, lr=lr,
                      **{k: round(v, 6) for k, v in mean.items()}, images_per_second=round(rate, 3),
                      detection_share=round(sum(w["detection"] for w in window) / (len(window) * len(batch.kinds)), 3),
                      text_cache_hit_rate=round(self.text.hit_rate, 4), train_seconds=round(st.train_seconds, 2))
            progress.update(task, loss=f"{mean['loss']:.4f}", rate=f"{rate:.1f} img/s")
        progress.update(task, completed=st.global_step)
        if self.step_callback is not None:
            self.step_callback(PretrainStep(st.global_step, losses, lr, seconds))
        due = cfg.checkpoint_minutes > 0 and self.clock() - self._last_checkpoint >= cfg.checkpoint_minutes * 60.0
        if self._agree(due):
            self._save_checkpoint()

    def _agree(self, value):
        """The main process's value on every process: time-based decisions (the horizon, a budget
        stop, a checkpoint) must be the same everywhere."""
        if self.accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        holder = [value]
        broadcast_object_list(holder)
        return holder[0]

    def _step(self, batch: PretrainBatch) -> dict[str, float]:
        acc, cfg = self.accelerator, self.config
        factor = lr_factor(self.state.global_step, self.state.horizon, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        text = self.text.batch(batch.input_ids)
        images = batch.images.to(acc.device)
        targets = [TrainTarget(b.to(acc.device), m.to(acc.device)) for b, m in zip(batch.boxes, batch.positive_maps)]
        with acc.autocast():
            outputs = self.module(images, text.hidden, text.mask, text.aggregate)
        losses = self.loss_fn(outputs, targets, text.mask)
        total = sum(losses.values())
        acc.backward(total)
        norm = acc.clip_grad_norm_(self.trainable, cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
        finite = bool(torch.isfinite(torch.as_tensor(norm)).all()) and bool(torch.isfinite(total.detach()))
        loss_finite = bool(torch.isfinite(total.detach()))  # fp16: the grad scaler's overflow steps are normal
        self._divergence.step(finite if acc.mixed_precision != "fp16" else loss_finite, self.state.global_step + 1,
                              float(total.detach()))
        if finite or acc.mixed_precision == "fp16":
            self.optimizer.step()
        else:
            self.state.skipped_steps += 1
            self._log("skipped_step", reason="non-finite loss or gradient", global_step=self.state.global_step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        return {k: float(v.detach()) for k, v in losses.items()}

    def _finish(self) -> PretrainResult:
        self._update_time()
        self._save_checkpoint()
        model_path = None
        if self.main:
            model_path = self.output_dir / FINAL_MODEL
            save_final_weights(self.model, model_path, self.text_encoder.get("minilm", False),
                               {"glip_pretrain": json.dumps(self._summary())})
        st = self.state
        self._log("end", model=model_path, **self._summary())
        self._say(f"stopped ({st.stop_reason}) after {st.global_step} steps, {st.samples} images, "
                  f"{st.train_seconds / 60:.1f} minutes; wrote {model_path}")
        return self._result(model_path)

    def _summary(self) -> dict[str, Any]:
        st = self.state
        return {"steps": st.global_step, "images": st.samples, "train_seconds": round(st.train_seconds, 1),
                "horizon": st.horizon, "seed": self.config.seed, "stop_reason": st.stop_reason}

    def _result(self, model_path: Path | None = None) -> PretrainResult:
        path = model_path or (self.output_dir / FINAL_MODEL)
        return PretrainResult(self.output_dir, self.state, path if path.is_file() else None, self.main)


# -- weights out -------------------------------------------------------------------------------------
def own_state(model: GLIP, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's weights without the text encoder (`language.*`), floats cast to `dtype`."""
    out = {}
    for key, value in without_text_encoder(model.state_dict()).items():
        value = value.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous().cpu()
    return out


def _metadata(model: GLIP, extra: dict[str, str] | None) -> dict[str, str]:
    return {**config_metadata(model.cfg),
            "text_encoder": json.dumps({"package": PACKAGE, "version": PACKAGE_VERSION, "sha256": WEIGHTS_SHA256}),
            **(extra or {})}


def save_final_weights(model: GLIP, path: Path, minilm: bool, extra: dict[str, str] | None = None) -> Path:
    """float32 weights: without the text encoder when it is the packaged MiniLM, else complete."""
    from safetensors.torch import save_file

    if not minilm:
        return save_safetensors(model, path, extra_metadata=extra)
    tensors, metadata = own_state(model), _metadata(model, extra)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def export_weights(model: GLIP, path: str | Path, dtype: torch.dtype = torch.float16,
                   extra_metadata: dict[str, str] | None = None, max_bytes: int | None = EXPORT_LIMIT_BYTES) -> Path:
    """Write the weights glip ships for a model pre-trained on top of the packaged MiniLM: every
    parameter but `language.*`, floats in `dtype`, config and text-encoder release in the metadata.
    Loads with `glipcli.weights.load_model` (the text encoder then comes from the package).

    GlipError when the model's text encoder is not exactly the packaged all-MiniLM-L6-v2 (the file
    could not be completed on loading) or the file would exceed `max_bytes`."""
    from safetensors.torch import save_file

    if not _is_minilm(model):
        raise GlipError("only a model whose text encoder is the packaged all-MiniLM-L6-v2 (unchanged) can be "
                        "exported without it")
    tensors = own_state(model, dtype)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_bytes is not None and size > max_bytes:
        raise GlipError(f"the exported weights would take {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit")
    path = Path(path)
    metadata = _metadata(model, extra_metadata)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_pretrain_folder(output: str | Path, resume: bool = False, inputs=()) -> None:
    """Check every file a pre-training run writes into `output`, before anything is loaded
    (`glipcli.outputs.OutputGuard.run_folder`)."""

    OutputGuard(inputs=inputs).run_folder(output, RUN_FOLDER_FILES, "--output", resume=resume,
                                          what="pre-training run")


def has_checkpoint(output: str | Path) -> bool:
    return ckpt.latest(Path(output)) is not None


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
