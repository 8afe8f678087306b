"""`glip pretrain`: GLIP pre-training on detection + grounding data, with a frozen text encoder.

    from glipcli.nano.pretrain import PretrainConfig, Pretrainer
    from glipcli.nano.pretrain_data import WorldSource
    from glipcli.nano.pretrain_model import build_pretrain_model
    model, text_encoder = build_pretrain_model("nano", seed=0)
    result = Pretrainer(model, WorldSource(seed=0), PretrainConfig(minutes=60), "runs/nano",
                        text_encoder=text_encoder).fit()

The recipe (official GLIP pre-training ingredients, scaled to a CPU):

- data: detection samples (per-image captions of positive + sampled negative category names)
  mixed with grounding samples (captions with phrase boxes), `glipcli.nano.pretrain_data`;
  the official multi-scale resize (scaled to the model's test size) and horizontal flip;
- loss: `GLIPLoss` (ATSS, token focal loss, GIoU, centerness);
- text encoder: frozen and in eval mode (its parameters never change, so shipped weights can
  leave it out: `glipcli.nano.export.export_weights`). Each distinct caption is encoded once, alone and without
  gradients, and its features are kept in a bounded LRU cache (`text_cache` captions);
- regularisation: none by default (`dropout=False`): the generated world never repeats a sample,
  so dropout, DropPath and attention dropout would only slow learning down (`dropout=True` keeps
  the architecture's rates, the official setting);
- optimiser: AdamW, weight decay 0.05 (biases: lr x2, no decay, official `make_optimizer`),
  gradient-norm clip 1.0; linear warm-up from `warmup_factor`, then cosine decay to
  `min_lr_factor` (or the official multi-step schedule: x0.1 at 67% and 89% of the run),
  `glipcli.nano.lr_schedule`;
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

Settings: `glipcli.nano.pretrain_config`; starting and resuming a run from what a user typed:
`glipcli.nano.pretrain_runs`; the folder, log, checkpoints, Ctrl-C and resume are
`glipcli.engine.training_run.TrainingRun`'s.

accelerate places the model and runs mixed precision and data parallelism (`accelerate launch
-m glipcli.cli.main pretrain ...`): `batch_size` is the images of a step over all processes.
"""


from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader

from glipcli.checkpoint import load_checkpoint, save_safetensors
from glipcli.data.epoch_batches import EpochBatches
from glipcli.engine import training_state as ckpt
from glipcli.engine.process import make_accelerator
from glipcli.engine.training_run import LOG_FILE, RUN_FILE, RunLayout, TrainingRun, write_json
from glipcli.errors import GlipError
from glipcli.losses import GLIPLoss, TrainTarget
from glipcli.modeling.glip import GLIP, GLIPOutputs
from glipcli.modeling.language import TextFeatures
from glipcli.nano.export import save_final_weights
from glipcli.nano.lr_schedule import lr_factor
from glipcli.nano.pretrain_config import PretrainConfig
from glipcli.nano.pretrain_data import PretrainBatch, PretrainCollate, PretrainDataset, PretrainSource, with_steps
from glipcli.nano.pretrain_model import disable_dropout, freeze_text_encoder, optimizer_groups, trainable_parameters
from glipcli.nano.text_cache import TextEncoderCache

FINAL_MODEL = "model.safetensors"
RUN_FOLDER_FILES = (RUN_FILE, LOG_FILE, FINAL_MODEL, ckpt.CHECKPOINTS)
LAYOUT = RunLayout("pre-training run", RUN_FOLDER_FILES)


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
    exported: Path | None = None  # the shippable weights, when asked for (`glipcli.nano.pretrain_runs`)


class _VisionHead(nn.Module):
    """What the optimiser trains through: GLIP given ready text features (tensors only, for DDP)."""

    def __init__(self, glip: GLIP):
        super().__init__()
        self.glip = glip

    def forward(self, images, hidden, mask, aggregate) -> GLIPOutputs:
        return self.glip(images, TextFeatures(hidden=hidden, embedded=hidden, mask=mask, aggregate=aggregate))


# -- the loop ----------------------------------------------------------------------------------------
class Pretrainer(TrainingRun):
    """Pre-trains `model` (in place) on `source` as `config` says, writing into `output_dir`.

    text_encoder: what run.json records about the text encoder (`build_pretrain_model`).
    resume: continue the run in `output_dir` (`config` must be the run's). step_callback: called
    after every optimiser step (tests interrupt a run through it)."""

    layout = LAYOUT

    def __init__(self, model: GLIP, source: PretrainSource, config: PretrainConfig, output_dir: str | Path, *,
                 text_encoder: dict[str, Any] | None = None, resume: bool = False, accelerator=None,
                 cpu: bool = False, progress: bool = True, console: Console | None = None,
                 run_info: dict[str, Any] | None = None,
                 step_callback: Callable[[PretrainStep], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.source = source
        self.config = config
        self.text_encoder = dict(text_encoder or {"kind": "model"})
        self.clock = clock
        if accelerator is None:
            accelerator = make_accelerator(config.mixed_precision, cpu)
        super().__init__(output_dir, accelerator, resume=resume, progress=progress, console=console,
                         run_info=run_info, step_callback=step_callback)
        self.state = PretrainState()

    # -- files ---------------------------------------------------------------------------------------
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
        start = time.perf_counter()
        name = f"step-{self.state.global_step:07d}"
        self._write_checkpoint(name, {"global_step": self.state.global_step})
        self._log("checkpoint", name=name, global_step=self.state.global_step,
                  seconds=round(time.perf_counter() - start, 3))
        self.accelerator.wait_for_everyone()
        self._save_seconds = time.perf_counter() - start
        self._last_checkpoint = self.clock()

    def _write_model(self, path: Path) -> None:
        save_safetensors(self.model, path)

    def _state_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.state), "config": self.config.to_dict(),
                "processes": self.accelerator.num_processes, "categories": list(self.source.categories),
                "source_images": len(self.source)}

    def _load_checkpoint(self) -> None:
        folder, saved, optimizer_state = self._read_checkpoint("pre-trained")
        if saved.get("categories") != list(self.source.categories) or saved.get("source_images") != len(self.source):
            raise GlipError("--resume: the pre-training data differ from the run's")
        load_checkpoint(self.model, folder / ckpt.MODEL_FILE)
        fields = {f.name for f in dataclasses.fields(PretrainState)}
        self.state = PretrainState(**{k: v for k, v in saved.items() if k in fields})
        self._restore_checkpoint(folder, saved, optimizer_state)

    # -- training ------------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"step {self.state.global_step}"

    def _position(self) -> dict[str, Any]:
        return {"global_step": self.state.global_step}

    def _resume_fields(self) -> dict[str, Any]:
        return {**self._position(), "train_seconds": self.state.train_seconds}

    def _already_finished(self) -> PretrainResult:
        self._say(f"{self.output_dir}: pre-training has finished ({self.state.stop_reason}); nothing to resume")
        return self._result()

    def _begin_session(self) -> None:
        self._session_start = self.clock()
        self._session_seconds_before = self.state.train_seconds
        self._last_checkpoint = self._session_start
        self._save_seconds = 2.0

    def _save_on_interrupt(self) -> None:
        self._update_time()
        self._save_checkpoint()

    def _start_files(self) -> None:
        if not self.main:
            return
        write_json(self.output_dir / RUN_FILE, self.run_record())
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
        self._optimizer_step(sum(losses.values()), cfg.grad_clip)
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
