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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from glipcli.checkpoint import load_checkpoint, save_safetensors
from glipcli.data.coco import CocoDetectionData
from glipcli.data.epoch_batches import EpochBatches
from glipcli.data.fewshot import few_shot_indices
from glipcli.data.train_dataset import TrainBatch, TrainCollate, TrainDataset
from glipcli.data.train_transforms import TrainTransform
from glipcli.data.training_prompt import TrainingPrompt, build_training_prompt
from glipcli.engine import training_state as ckpt
from glipcli.engine.divergence import check_finite
from glipcli.engine.evaluate import evaluate
from glipcli.engine.process import make_accelerator
from glipcli.engine.prompt_tuning import PromptAdapter, TextOffset, add_text_offset, load_adapter, model_identity
from glipcli.engine.schedule import EarlyStopping, PlateauSchedule
from glipcli.engine.train_config import TrainConfig
from glipcli.engine.train_module import GroundingTrainModule
from glipcli.engine.training_run import LOG_FILE, RUN_FILE, RunLayout, TrainingRun, write_json
from glipcli.engine.trainable import TrainablePlan, configure_trainable, param_groups
from glipcli.errors import GlipError, excerpt
from glipcli.evaluation.metrics import DetectionMetrics
from glipcli.io import atomic_write
from glipcli.losses import GLIPLoss
from glipcli.modeling.glip import GLIP
from glipcli.prompts.prompt_file import PromptSpec

METRICS_FILE = "metrics.json"
PROMPT_FILE = "prompt.yaml"
BEST_MODEL = "model_best.safetensors"
BEST_ADAPTER = "adapter_best.safetensors"


RUN_FOLDER_FILES = (RUN_FILE, PROMPT_FILE, LOG_FILE, METRICS_FILE, BEST_MODEL, BEST_ADAPTER, ckpt.CHECKPOINTS)
LAYOUT = RunLayout("training run", RUN_FOLDER_FILES)


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


class Trainer(TrainingRun):
    """Fine-tunes `model` (in place) on `data` as `config` says, writing into `output_dir`.

    prompt_spec: class texts / prefixes / suffixes / suppression phrases for the caption (None:
    the dataset's category names). resume: continue the run in `output_dir` (`config` must be
    the run's). run_info: extra facts for run.json (e.g. where the weights came from).
    step_callback: called after every optimiser step (tests interrupt a run through it).
    The folder, log, checkpoints, Ctrl-C and resume are `TrainingRun`'s."""

    layout = LAYOUT

    def __init__(self, model: GLIP, data: TrainData, config: TrainConfig, output_dir: str | Path, *,
                 prompt_spec: PromptSpec | None = None, resume: bool = False, accelerator=None,
                 cpu: bool = False, progress: bool = True, console: Console | None = None,
                 run_info: dict[str, Any] | None = None, step_callback: Callable[[StepInfo], None] | None = None):
        self.model = model
        self.data = data
        self.config = config.resolved()
        self.prompt_spec = prompt_spec
        if accelerator is None:
            accelerator = make_accelerator(self.config.mixed_precision, cpu)
        super().__init__(output_dir, accelerator, resume=resume, progress=progress, console=console,
                         run_info=run_info, step_callback=step_callback)
        self.is_prompt = self.config.task == "prompt"

    # -- set-up ---------------------------------------------------------------------------------
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
        frozen_text = cfg.task != "full" or "language" in cfg.frozen_parts
        self.module = GroundingTrainModule(self.model, offset, frozen_text=frozen_text)
        groups = param_groups(self.module.named_parameters(), cfg)
        if not groups:
            raise GlipError("nothing to train: no parameter requires a gradient")
        self.trainable = [p for g in groups for p in g["params"]]
        # the group whose lr the log reports: one at the base lr (the first group, unless lr factors move it)
        self._lr_group = next((i for i, g in enumerate(groups) if g["lr"] == cfg.lr), 0)
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
        if self.main:
            write_json(self.output_dir / METRICS_FILE, metrics)
        return metrics

    def _save_checkpoint(self) -> None:
        name = ckpt.checkpoint_name(self.state.epoch, self.state.step)
        self._write_checkpoint(name, {**self._position(), "global_step": self.state.global_step})
        self._log("checkpoint", name=name, **self._position())
        self.accelerator.wait_for_everyone()

    def _write_model(self, path: Path) -> None:
        if self.is_prompt:
            ckpt.save_tensors(path, {"text_offset": self._offset()})
        else:
            save_safetensors(self._glip(), path, extra_metadata=self._training_metadata())

    def _state_dict(self) -> dict[str, Any]:
        state = {k: getattr(self.state, k) for k in RunState.__dataclass_fields__}
        state.update(config=self.config.to_dict(), plateau=self.plateau.state_dict(),
                     early_stopping=self.stopper.state_dict(), train_images=len(self.train_indices),
                     caption=self.prompt.caption, processes=self.accelerator.num_processes)
        if self.is_prompt:
            state["base_model"] = self.base_identity
        return state

    def _load_checkpoint(self) -> None:
        folder, saved, optimizer_state = self._read_checkpoint("trained")
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
        self.plateau.load_state_dict(saved["plateau"])
        self.stopper.load_state_dict(saved["early_stopping"])
        self.state = RunState(**{k: saved[k] for k in RunState.__dataclass_fields__})
        self._restore_checkpoint(folder, saved, optimizer_state)

    # -- training -----------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"epoch {self.state.epoch + 1}, step {self.state.step}"

    def _position(self) -> dict[str, Any]:
        return {"epoch": self.state.epoch, "step": self.state.step}

    def _resume_fields(self) -> dict[str, Any]:
        return {**self._position(), "global_step": self.state.global_step}

    def _already_finished(self):
        raise GlipError(f"{self.output_dir}: this run has finished (see {METRICS_FILE}); nothing to resume")

    def _start_files(self) -> None:
        if not self.accelerator.is_main_process:
            return
        write_json(self.output_dir / RUN_FILE, self._run_record())
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

    def _train(self) -> None:
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
            lr = self.optimizer.param_groups[self._lr_group]["lr"]
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
        self._optimizer_step(sum(losses.values()), self.config.grad_clip)
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
            holder = [result]
            broadcast_object_list(holder)
            result = holder[0]
        return result

    def _end_epoch(self, epoch: int) -> None:
        cfg = self.config
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[self._lr_group]["lr"],
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
                      + (f"; lr reduced to {self.optimizer.param_groups[self._lr_group]['lr']:.2e}" if reduced else ""))
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

