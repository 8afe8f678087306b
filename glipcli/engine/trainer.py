"""The training loop of `glip finetune` and `glip prompt-tune` (official GLIP fine-tuning).

    from glipcli.engine.trainer import Trainer, TrainData
    from glipcli.engine.train_config import TrainConfig
    trainer = Trainer(model, TrainData(train, val, test), TrainConfig(task="full", shots=1), "out/")
    result = trainer.fit()          # result.metrics == json.load(open("out/metrics.json"))

One epoch is `copies` shuffled passes over the (few-shot) training images; after each epoch the
model is evaluated on the validation split (COCO AP), the learning rate is reduced on a plateau,
the best model is kept, and training stops early when the AP has not improved for `stop_patience`
evaluations (so `epochs` is a cap). At the end the best model is evaluated on the test split.

Output folder:

    run.json             what was trained on and how (the settings `--resume` continues with)
    prompt.yaml          the training caption as a prompt file (`glip detect --prompt-file`)
    log.jsonl            one JSON object per event (start, data, step, eval, checkpoint, end)
    metrics.json         validation history, best epoch, test metrics (rewritten atomically)
    model_best.safetensors   (full / linear-probe) weights + config, for `glip detect --weights`
    adapter_best.safetensors (prompt tuning) the prompt offset, see `glipcli.engine.prompt_tuning`
    checkpoints/         the latest resumable checkpoint (see `glipcli.engine.training_state`)

Without a validation split there is no early stopping and "best" is the last epoch.

Exact resumption: the sample order and every augmentation are functions of (seed, epoch,
position) (`EpochBatches`, `TrainDataset`), and a checkpoint holds the weights, the optimiser,
the schedules and the torch random generators (dropout, DropPath, DropBlock). Resuming from a
checkpoint gives, on the same hardware and software, the weights of an uninterrupted run. A
Ctrl-C in a single-process run saves a checkpoint at the current step first.

accelerate places the model, runs mixed precision (`mixed_precision` "bf16" / "fp16") and
multi-GPU data parallelism (`accelerate launch -m glipcli.cli.main finetune ...`): `batch_size` is
the images per step over all processes (the official `SOLVER.IMS_PER_BATCH`), each process takes
its equal slice; the main process evaluates, logs and writes files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from glipcli.checkpoint import load_checkpoint, save_safetensors
from glipcli.data.coco import CocoDetectionData
from glipcli.data.epoch_batches import EpochBatches
from glipcli.data.fewshot import few_shot_indices
from glipcli.data.train_dataset import TrainBatch, TrainCollate, TrainDataset
from glipcli.data.train_transforms import TrainTransform
from glipcli.data.training_prompt import TrainingPrompt, build_training_prompt
from glipcli.engine import training_state as ckpt
from glipcli.engine.divergence import DivergenceCheck, check_finite
from glipcli.engine.evaluate import evaluate
from glipcli.engine.process import GracefulInterrupt, make_accelerator
from glipcli.engine.prompt_tuning import PromptAdapter, TextOffset, add_text_offset, load_adapter, model_identity
from glipcli.engine.schedule import EarlyStopping, PlateauSchedule
from glipcli.engine.train_config import TrainConfig
from glipcli.engine.trainable import TrainablePlan, configure_trainable, param_groups
from glipcli.errors import GlipError, clip, excerpt
from glipcli.evaluation.metrics import DetectionMetrics
from glipcli.io import atomic_write, finite_or_null, json_text
from glipcli.losses import GLIPLoss
from glipcli.modeling.glip import GLIP, GLIPOutputs
from glipcli.outputs import OutputGuard
from glipcli.prompts.prompt_file import PromptSpec

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
PROMPT_FILE = "prompt.yaml"
BEST_MODEL = "model_best.safetensors"
BEST_ADAPTER = "adapter_best.safetensors"


RUN_FOLDER_FILES = (RUN_FILE, PROMPT_FILE, LOG_FILE, METRICS_FILE, BEST_MODEL, BEST_ADAPTER, ckpt.CHECKPOINTS)


def check_run_folder(output: str | Path, resume: bool = False, inputs=(), option: str = "--output") -> None:
    """Check, before anything is loaded, every file a training run writes into `output`
    (`glipcli.outputs.OutputGuard.run_folder`): without `resume`, none may exist; none may be an
    input (e.g. `--prompt-file OUTPUT/prompt.yaml`)."""

    OutputGuard(inputs=inputs).run_folder(output, RUN_FOLDER_FILES, option, resume=resume, what="training run")


def has_checkpoint(output: str | Path) -> bool:
    """Whether a run folder holds a complete checkpoint to resume from."""
    return ckpt.latest(Path(output)) is not None


@dataclass
class TrainData:
    train: CocoDetectionData
    val: CocoDetectionData | None = None
    test: CocoDetectionData | None = None


@dataclass
class StepInfo:
    epoch: int  # 0-based
    step: int  # steps done in this epoch
    global_step: int
    losses: dict[str, float]
    lr: float


@dataclass
class TrainResult:
    output_dir: Path
    best_path: Path
    metrics: dict[str, Any]
    main_process: bool = True  # False in the other processes of a multi-process run


@dataclass
class RunState:
    """Where training stands (serialised into every checkpoint)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed in the current epoch
    global_step: int = 0
    skipped_steps: int = 0
    stopped_early: bool = False
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


class GroundingTrainModule(nn.Module):
    """What is trained: GLIP, plus the prompt offset when prompt tuning. With a frozen language
    backbone the text is encoded once (without gradients) and reused."""

    def __init__(self, glip: GLIP, text_offset: TextOffset | None = None, frozen_text: bool = False):
        super().__init__()
        self.glip = glip
        self.text_offset = text_offset
        self.frozen_text = frozen_text
        self._text_cache = None

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> GLIPOutputs:
        if self.frozen_text:
            if self._text_cache is None:
                with torch.no_grad():
                    self._text_cache = self.glip.encode_text(input_ids, attention_mask)
            text = self._text_cache
        else:
            text = self.glip.encode_text(input_ids, attention_mask)
        if self.text_offset is not None:
            text = self.text_offset(text)
        return self.glip(images, text)


class Trainer:
    """Fine-tunes `model` (in place) on `data` as `config` says, writing into `output_dir`.

    prompt_spec: class texts / prefixes / suffixes / suppression phrases for the caption (None:
    the dataset's category names). resume: continue the run in `output_dir` (`config` must be
    the run's). run_info: extra facts for run.json (e.g. where the weights came from).
    step_callback: called after every optimiser step (tests interrupt a run through it)."""

    def __init__(self, model: GLIP, data: TrainData, config: TrainConfig, output_dir: str | Path, *,
                 prompt_spec: PromptSpec | None = None, resume: bool = False, accelerator=None,
                 cpu: bool = False, progress: bool = True, console: Console | None = None,
                 run_info: dict[str, Any] | None = None, step_callback: Callable[[StepInfo], None] | None = None):
        self.model = model
        self.data = data
        self.config = config.resolved()
        self.output_dir = Path(output_dir)
        self.prompt_spec = prompt_spec
        self.resume = resume
        self.run_info = dict(run_info or {})
        self.step_callback = step_callback
        self.console = console or Console(stderr=True)
        self.show_progress = progress
        if accelerator is None:
            accelerator = make_accelerator(self.config.mixed_precision, cpu)
        self.accelerator = accelerator
        self.is_prompt = self.config.task == "prompt"
        self._at_step_boundary = False  # the state matches the weights (a checkpoint may be taken)
        self._interrupt = GracefulInterrupt(self._say)
        self._divergence = DivergenceCheck()
        self._restarted = False  # --resume of a run that stopped before its first checkpoint

    # -- set-up ---------------------------------------------------------------------------------
    def _check_output_dir(self) -> None:
        """The run folder's files are the run's own: a new run refuses a folder holding any of
        them (a user's own prompt.yaml or log.jsonl included); `--resume` continues from the
        latest checkpoint, or starts afresh, saying so, a run stopped before its first one."""
        out = self.output_dir
        if self.resume and ckpt.latest(out) is None:
            if not (out / RUN_FILE).is_file():
                raise GlipError(f"{out}: no training run to resume ({RUN_FILE} is missing)")
            self.resume = False
            self._restarted = True
        check_run_folder(out, resume=self.resume or self._restarted)

    def _log(self, event: str, **fields: Any) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json_text(finite_or_null(record), self.output_dir / LOG_FILE, default=_json_default) + "\n")

    def _say(self, text: str) -> None:
        if self.accelerator.is_main_process:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def _setup(self) -> None:
        cfg = self.config
        acc = self.accelerator
        model_cfg = self.model.cfg
        train = self.data.train
        self.prompt: TrainingPrompt = build_training_prompt(train.classes, model_cfg.language.max_query_len,
                                                            self.prompt_spec)
        self.train_indices = few_shot_indices([r.labels for r in train.images], cfg.shots, cfg.seed)
        self._warn_short_classes(train, cfg.shots)
        self.val_indices = None
        if self.data.val is not None and cfg.val_shots:
            self.val_indices = few_shot_indices([r.labels for r in self.data.val.images], cfg.val_shots, cfg.seed)
        self.plan: TrainablePlan = configure_trainable(self.model, cfg)
        offset = None
        if self.is_prompt:
            self.base_identity = model_identity(self.model)
            offset = TextOffset(model_cfg.language.max_query_len, model_cfg.language.hidden_size)
        frozen_text = cfg.task != "full"
        self.module = GroundingTrainModule(self.model, offset, frozen_text=frozen_text)
        groups = param_groups(self.module.named_parameters(), cfg)
        if not groups:
            raise GlipError("nothing to train: no parameter requires a gradient")
        self.trainable = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.module, self.optimizer = acc.prepare(self.module, optimizer)
        reduce_mean = (lambda t: acc.reduce(t, "mean")) if acc.num_processes > 1 else None
        self.loss_fn = GLIPLoss(model_cfg, reduce_mean=reduce_mean)
        if cfg.batch_size % acc.num_processes:
            raise GlipError(f"--batch-size {cfg.batch_size} (images per step over all processes) is not divisible "
                            f"by the {acc.num_processes} processes")
        self.batches = EpochBatches.of(self.train_indices, cfg.copies, cfg.batch_size // acc.num_processes,
                                       cfg.seed, acc.num_processes, acc.process_index)
        transform = (TrainTransform.official(model_cfg.input) if cfg.augment else
                     TrainTransform(model_cfg.input, (model_cfg.input.min_size,), model_cfg.input.max_size, 0.0))
        self.dataset = TrainDataset(train, transform, cfg.seed)
        self.collate = TrainCollate(self.prompt, model_cfg.input.size_divisible)
        self.plateau = PlateauSchedule(cfg.lr_factor, cfg.lr_patience, cfg.min_lr)
        self.stopper = EarlyStopping(cfg.stop_patience)
        self.state = RunState()
        device = acc.device
        self.input_ids = self.prompt.input_ids.to(device)
        self.attention_mask = self.prompt.attention_mask.to(device)

    def _warn_short_classes(self, train: CocoDetectionData, shots: int) -> None:
        """A K-shot request a class cannot meet (fewer than K training images show it) trains on
        what there is, with a warning naming the classes."""
        if not shots:
            return
        shown = [0] * len(train.classes)
        for index in self.train_indices:
            for label in {int(c) for c in train.images[index].labels}:
                shown[label] += 1
        short = [f"{excerpt(name)} ({n})" for name, n in zip(train.classes, shown) if n < shots]
        if short:
            more = f", ... ({len(short)} classes)" if len(short) > 5 else ""
            self._say(f"warning: --shots {shots}: fewer than {shots} training images show "
                      + ", ".join(short[:5]) + more + "; they train on all they have")

    # -- files -------------------------------------------------------------------------------------
    def _glip(self) -> GLIP:
        return self.accelerator.unwrap_model(self.module).glip

    def _offset(self) -> torch.Tensor:
        return self.accelerator.unwrap_model(self.module).text_offset.weight

    def _run_record(self) -> dict[str, Any]:
        def split_info(data: CocoDetectionData | None) -> dict | None:
            if data is None:
                return None
            return {"ann": str(data.ann_path.resolve()), "images": str(data.image_dir.resolve()),
                    "stats": data.stats.to_dict()}

        train = self.data.train
        return {
            "task": self.config.task,
            "config": self.config.to_dict(),
            "model_config": self.model.cfg.to_dict(),
            "classes": train.classes,
            "caption": self.prompt.caption,
            "prompt_yaml": self.prompt.spec.to_yaml(),
            "data": {"train": split_info(train), "valid": split_info(self.data.val),
                     "test": split_info(self.data.test)},
            "train_images": [train.images[i].file_name for i in self.train_indices],
            "val_images": None if self.val_indices is None or self.data.val is None
            else [self.data.val.images[i].file_name for i in self.val_indices],
            "processes": self.accelerator.num_processes,
            **self.run_info,
        }

    def _training_metadata(self) -> dict[str, str]:
        return {"glip_training": json.dumps({"task": self.config.task, "caption": self.prompt.caption,
                                             "classes": self.data.train.classes,
                                             "prompt_yaml": self.prompt.spec.to_yaml()})}

    def _adapter(self) -> PromptAdapter:
        encoded = self.prompt.encoded
        caption = self.prompt.spec.caption()
        return PromptAdapter(
            offset=self._offset().detach().float().cpu().clone(), caption=encoded.caption,
            input_ids=encoded.input_ids[0, :encoded.num_tokens].tolist(), phrases=list(caption.phrases),
            class_names=[c.name for c in self.prompt.spec.classes], base=self.base_identity,
            prompt_yaml=self.prompt.spec.to_yaml(), extra={"epoch": self.state.epoch})

    def _save_best(self) -> None:
        if not self.accelerator.is_main_process:
            return
        check_finite(self.trainable, "the best model")
        if self.is_prompt:
            self._adapter().save(self.output_dir / BEST_ADAPTER)
        else:
            save_safetensors(self._glip(), self.output_dir / BEST_MODEL, extra_metadata=self._training_metadata())

    def _write_metrics(self, test: DetectionMetrics | None = None) -> dict[str, Any]:
        history = self.state.history
        best = next((h for h in history if h.get("epoch") == self.stopper.best_epoch), None)
        metrics = {
            "task": self.config.task,
            "caption": self.prompt.caption,
            "classes": self.data.train.classes,
            "train_images": len(self.train_indices),
            "epochs_run": self.state.epoch,
            "steps": self.state.global_step,
            "stopped_early": self.state.stopped_early,
            "finished": self.state.finished,
            "best_epoch": None if best is None else best["epoch"],
            "best": None if best is None else {"val": best.get("val")},
            "history": history,
            "test": None if test is None else _test_entry(test),
        }
        if self.accelerator.is_main_process:
            text = json_text(metrics, self.output_dir / METRICS_FILE, indent=2, default=_json_default) + "\n"
            atomic_write(self.output_dir / METRICS_FILE, lambda p: p.write_text(text))
        return metrics

    def _save_checkpoint(self) -> None:
        acc = self.accelerator
        check_finite(self.trainable, "the checkpoint")
        name = ckpt.checkpoint_name(self.state.epoch, self.state.step)
        if acc.is_main_process:
            tmp = ckpt.prepare_temporary(self.output_dir, name)
        acc.wait_for_everyone()
        tmp = ckpt.temporary_dir(self.output_dir, name)
        ckpt.save_tensors(tmp / f"rng-{acc.process_index}.safetensors", ckpt.rng_tensors())
        if acc.is_main_process:
            if self.is_prompt:
                ckpt.save_tensors(tmp / ckpt.MODEL_FILE, {"text_offset": self._offset()})
            else:
                save_safetensors(self._glip(), tmp / ckpt.MODEL_FILE, extra_metadata=self._training_metadata())
            ckpt.save_state(tmp / ckpt.STATE_FILE, self._state_dict(), self.optimizer.state_dict())
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.commit(self.output_dir, name, {"epoch": self.state.epoch, "step": self.state.step,
                                                "global_step": self.state.global_step})
            self._log("checkpoint", name=name, epoch=self.state.epoch, step=self.state.step)
        acc.wait_for_everyone()

    def _state_dict(self) -> dict[str, Any]:
        state = {k: getattr(self.state, k) for k in RunState.__dataclass_fields__}
        state.update(config=self.config.to_dict(), plateau=self.plateau.state_dict(),
                     early_stopping=self.stopper.state_dict(), train_images=len(self.train_indices),
                     caption=self.prompt.caption, processes=self.accelerator.num_processes)
        if self.accelerator.scaler is not None:
            state["grad_scaler"] = self.accelerator.scaler.state_dict()
        if self.is_prompt:
            state["base_model"] = self.base_identity
        return state

    def _load_checkpoint(self) -> None:
        acc = self.accelerator
        folder = ckpt.latest(self.output_dir)
        saved, optimizer_state = ckpt.load_state(folder / ckpt.STATE_FILE)
        stored = TrainConfig.from_dict(saved["config"])
        differences = stored.differences(self.config)
        if differences:
            raise GlipError(f"--resume: {self.output_dir} was trained with " + "; ".join(differences)
                            + " (a resumed run continues with its own settings)")
        if saved.get("processes", 1) != acc.num_processes:
            raise GlipError(f"--resume: the run used {saved.get('processes')} processes, this one {acc.num_processes} "
                            "(the batch order depends on it)")
        if saved.get("caption") != self.prompt.caption:
            raise GlipError(f"--resume: the run was trained with the caption {excerpt(saved.get('caption'))}, "
                            f"not {excerpt(self.prompt.caption)} (different classes or prompt file)")
        if saved.get("train_images") != len(self.train_indices):
            raise GlipError("--resume: the training data differ from the run's "
                            f"({saved.get('train_images')} training images then, {len(self.train_indices)} now)")
        if self.is_prompt:
            if saved.get("base_model") != self.base_identity:
                raise GlipError("--resume: the base model's weights differ from those the prompt was being tuned on")
            tensors, _ = ckpt.load_tensors(folder / ckpt.MODEL_FILE)
            with torch.no_grad():
                self._offset().copy_(tensors["text_offset"])
        else:
            load_checkpoint(self._glip(), folder / ckpt.MODEL_FILE)
        self.optimizer.load_state_dict(optimizer_state)
        self.plateau.load_state_dict(saved["plateau"])
        self.stopper.load_state_dict(saved["early_stopping"])
        self.state = RunState(**{k: saved[k] for k in RunState.__dataclass_fields__})
        if acc.scaler is not None and "grad_scaler" in saved:
            acc.scaler.load_state_dict(saved["grad_scaler"])
        rng_file = folder / f"rng-{acc.process_index}.safetensors"
        rng, _ = ckpt.load_tensors(rng_file)
        ckpt.restore_rng(rng)

    # -- training -----------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        acc = self.accelerator
        self._check_output_dir()
        if acc.is_main_process:
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
                raise GlipError(f"{self.output_dir}: this run has finished (see {METRICS_FILE}); nothing to resume")
            self._log("resume", epoch=self.state.epoch, step=self.state.step, global_step=self.state.global_step)
            self._say(f"resuming at epoch {self.state.epoch + 1}, step {self.state.step}")
        else:
            if self._restarted:
                self._say(f"note: {self.output_dir} holds no checkpoint yet (the run stopped before its first one): "
                          "starting it afresh with its own settings")
            self._start_files()
        self._interrupt.install(self.accelerator.num_processes)
        try:
            self._train_epochs()
            return self._finish()
        except KeyboardInterrupt:
            if acc.num_processes == 1 and self._at_step_boundary and not self.state.finished:
                self._save_checkpoint()
                self._log("interrupted", epoch=self.state.epoch, step=self.state.step)
                self._say(f"interrupted at epoch {self.state.epoch + 1}, step {self.state.step}; checkpoint saved, "
                          f"continue with --resume --output {self.output_dir}")
            else:
                self._say(f"interrupted; continue from the last checkpoint with --resume --output {self.output_dir}")
            raise
        finally:
            self._interrupt.restore()

    def _start_files(self) -> None:
        if not self.accelerator.is_main_process:
            return
        record = self._run_record()
        text = json_text(record, self.output_dir / RUN_FILE, indent=2, default=_json_default) + "\n"
        atomic_write(self.output_dir / RUN_FILE, lambda p: p.write_text(text))
        header = (f"The caption glip {self.config.task} trained with. Detect with it:\n"
                  f"  glip detect IMAGES --prompt-file {PROMPT_FILE} --weights ...")
        spec_text = self.prompt.spec.to_yaml(header=header)
        atomic_write(self.output_dir / PROMPT_FILE, lambda p: p.write_text(spec_text))
        cfg = self.config
        self._log("start", task=cfg.task, config=cfg.to_dict(), caption=self.prompt.caption,
                  classes=self.data.train.classes, train_images=len(self.train_indices),
                  steps_per_epoch=len(self.batches), processes=self.accelerator.num_processes,
                  device=str(self.accelerator.device), **self.run_info)
        for split, data in (("train", self.data.train), ("valid", self.data.val), ("test", self.data.test)):
            if data is not None:
                self._log("data", split=split, **data.stats.to_dict())
                self._say(data.stats.summary(split))
        self._say(f"{cfg.task}: {len(self.train_indices)} training images"
                  + (f" ({cfg.shots}-shot, seed {cfg.seed})" if cfg.shots else "")
                  + f" x {cfg.copies} cop{'y' if cfg.copies == 1 else 'ies'}, {len(self.batches)} steps per epoch, "
                  f"at most {cfg.epochs} epochs; caption {self.prompt.caption!r}")

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=self.console,
                        disable=not (self.show_progress and self.accelerator.is_main_process))

    def _train_epochs(self) -> None:
        cfg = self.config
        steps = len(self.batches)
        with self._progress() as progress:
            task = progress.add_task("", total=cfg.epochs * steps, loss="-",
                                     completed=self.state.epoch * steps + self.state.step)
            while self.state.epoch < cfg.epochs and not self.state.stopped_early:
                epoch = self.state.epoch
                progress.update(task, description=f"epoch {epoch + 1}/{cfg.epochs}")
                if self.state.step < steps:
                    self._train_epoch(epoch, progress, task)
                self._end_epoch(epoch)

    def _train_epoch(self, epoch: int, progress: Progress, task) -> None:
        acc = self.accelerator
        batches = self.batches.batches(epoch, start=self.state.step)
        loader = DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collate,
                            num_workers=self.config.num_workers, generator=torch.Generator(),
                            pin_memory=False)
        self.plan.set_train_mode(self._glip())
        window: list[float] = []
        self._at_step_boundary = True
        for batch in loader:
            self._at_step_boundary = False
            losses = self._step(batch.to(acc.device))
            self.state.step += 1
            self.state.global_step += 1
            self._at_step_boundary = True
            total = sum(losses.values())
            window = (window + [total])[-20:]
            lr = self.optimizer.param_groups[0]["lr"]
            self._log("step", epoch=epoch + 1, step=self.state.step, global_step=self.state.global_step,
                      loss=total, lr=lr, **losses)
            progress.update(task, advance=1, loss=f"{sum(window) / len(window):.4f}")
            if self.step_callback is not None:
                self.step_callback(StepInfo(epoch, self.state.step, self.state.global_step, losses, lr))
            if self._interrupt.stop_requested:
                raise KeyboardInterrupt
        self._at_step_boundary = False

    def _step(self, batch: TrainBatch) -> dict[str, float]:
        acc = self.accelerator
        size = len(batch.targets)
        with acc.autocast():
            outputs = self.module(batch.images, self.input_ids, self.attention_mask)
        mask = self.attention_mask.expand(size, -1)
        losses = self.loss_fn(outputs, batch.targets, mask)
        total = sum(losses.values())
        acc.backward(total)
        if self.config.grad_clip > 0:
            norm = acc.clip_grad_norm_(self.trainable, self.config.grad_clip)
        else:
            norm = torch.tensor(0.0)
        finite = bool(torch.isfinite(torch.as_tensor(norm)).all()) and bool(torch.isfinite(total.detach()))
        loss_finite = bool(torch.isfinite(total.detach()))  # fp16: the grad scaler's overflow steps are normal
        self._divergence.step(finite if acc.mixed_precision != "fp16" else loss_finite, self.state.global_step + 1,
                              float(total.detach()))
        if finite or acc.mixed_precision == "fp16":  # fp16: the grad scaler skips bad steps itself
            self.optimizer.step()
        else:
            self.state.skipped_steps += 1
            self._log("skipped_step", reason="non-finite loss or gradient", global_step=self.state.global_step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        return {k: float(v.detach()) for k, v in losses.items()}

    def _evaluate(self, data: CocoDetectionData, indices) -> DetectionMetrics | None:
        acc = self.accelerator
        result = None
        if acc.is_main_process:
            transform = None
            if self.is_prompt:
                offset = self._offset().detach()
                transform = lambda text: add_text_offset(text, offset)  # noqa: E731
            result = evaluate(self._glip(), data, self.prompt, self.config.eval_batch_size, acc.device,
                              indices, text_transform=transform)
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            holder = [result]
            broadcast_object_list(holder)
            result = holder[0]
        return result

    def _end_epoch(self, epoch: int) -> None:
        cfg = self.config
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                                 "global_step": self.state.global_step}
        if self.data.val is not None:
            result = self._evaluate(self.data.val, self.val_indices)
            ap = max(result.ap, 0.0)  # undefined (-1) counts as 0 for model selection
            reduced = self.plateau.step(ap, self.optimizer)
            is_best = self.stopper.step(ap, epoch + 1)
            entry.update(val=result.metrics, best=is_best, lr_reduced=reduced)
            if is_best:
                self._save_best()
            self._log("eval", split="valid", epoch=epoch + 1, best=is_best, lr_reduced=reduced, **result.metrics)
            self._say(f"epoch {epoch + 1}: val AP {result.metrics['AP']:.4f} AP50 {result.metrics['AP50']:.4f}"
                      + (" (best)" if is_best
                         else f" (best {self.stopper.best:.4f} at epoch {self.stopper.best_epoch})")
                      + (f"; lr reduced to {self.optimizer.param_groups[0]['lr']:.2e}" if reduced else ""))
            if self.stopper.should_stop:
                self.state.stopped_early = True
                self._log("early_stop", epoch=epoch + 1, best_epoch=self.stopper.best_epoch)
                self._say(f"stopping early: no better val AP for {cfg.stop_patience} evaluations")
        else:
            self.stopper.step(0.0, epoch + 1)
            self._save_best()
        self.state.history.append(entry)
        self.state.epoch = epoch + 1
        self.state.step = 0
        self._write_metrics()
        self._save_checkpoint()

    def _finish(self) -> TrainResult:
        acc = self.accelerator
        best_path = self.output_dir / (BEST_ADAPTER if self.is_prompt else BEST_MODEL)
        acc.wait_for_everyone()
        if self.is_prompt:
            adapter = load_adapter(best_path)
            with torch.no_grad():
                self._offset().copy_(adapter.offset.to(self._offset().device))
        else:
            load_checkpoint(self._glip(), best_path)
        test = None
        if self.data.test is not None:
            test = self._evaluate(self.data.test, None)
            self._log("eval", split="test", epoch=self.stopper.best_epoch, **test.metrics)
            self._say(f"test (best epoch {self.stopper.best_epoch}): AP {test.metrics['AP']:.4f} "
                      f"AP50 {test.metrics['AP50']:.4f}")
        self.state.finished = True
        metrics = self._write_metrics(test)
        self._save_checkpoint()
        self._log("end", epochs_run=self.state.epoch, stopped_early=self.state.stopped_early,
                  best_epoch=self.stopper.best_epoch, best=str(best_path))
        self._say(f"wrote {best_path} and {self.output_dir / METRICS_FILE}")
        return TrainResult(self.output_dir, best_path, metrics, acc.is_main_process)


def _test_entry(result: DetectionMetrics) -> dict[str, Any]:
    """The `test` entry of metrics.json: summary, per-class AP (by class name), counts."""
    return {"metrics": dict(result.metrics), "per_class_ap": dict(result.per_category),
            "num_images": result.num_images, "num_detections": result.num_detections}


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
