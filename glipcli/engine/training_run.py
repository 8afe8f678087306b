"""What every training run shares (`glip finetune` / `prompt-tune` through `Trainer`, `glip
pretrain` through `Pretrainer`): its folder, log, console, checkpoints, Ctrl-C and resume.

    class Trainer(TrainingRun):
        layout = RunLayout("training run", (RUN_FILE, LOG_FILE, ..., CHECKPOINTS))
        # _setup, _start_files, _load_checkpoint, _train, _finish, _where ...
    result = Trainer(...).fit()

`TrainingRun.fit` is the skeleton: check the folder (a `--resume` of a run stopped before its
first checkpoint starts it afresh, saying so), seed, set up, then either load the latest
checkpoint (a damaged one is one line) or write the run's first files, train and finish. A
Ctrl-C in a single-process run at a step boundary saves a checkpoint first (`GracefulInterrupt`).

A checkpoint (`glipcli.engine.training_state` layout) holds the weights, the run state with the
optimiser, the grad scaler (mixed precision) and one file of torch generator states per process:
resuming gives, on the same hardware and software, the weights of an uninterrupted run.
Non-finite weights are never saved (`glipcli.engine.divergence`).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from glipcli.engine import training_state as ckpt
from glipcli.engine.divergence import DivergenceCheck, check_finite
from glipcli.engine.process import GracefulInterrupt
from glipcli.engine.run_settings import RunSettings
from glipcli.errors import GlipError, clip
from glipcli.io import atomic_write, finite_or_null, json_text
from glipcli.outputs import OutputGuard

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"


def json_default(value: Any) -> Any:
    """JSON for what the run files hold besides plain values: paths, non-finite floats (null), tensors."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def has_checkpoint(output: str | Path) -> bool:
    """Whether a run folder holds a complete checkpoint to resume from."""
    return ckpt.latest(Path(output)) is not None


def write_json(path: Path, record: Any) -> None:
    """Write `record` as indented JSON, atomically."""
    text = json_text(record, path, indent=2, default=json_default) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


@dataclass(frozen=True)
class RunLayout:
    """The files one kind of run writes into its folder; `what` names the run in messages."""

    what: str
    files: tuple[str, ...]

    def check(self, output: str | Path, resume: bool = False, inputs=(), option: str = "--output") -> None:
        """Check, before anything is loaded, every file the run writes into `output`
        (`glipcli.outputs.OutputGuard.run_folder`): without `resume`, none may exist; none may
        be an input (e.g. `--prompt-file OUTPUT/prompt.yaml`)."""
        OutputGuard(inputs=inputs).run_folder(output, self.files, option, resume=resume, what=self.what)


class TrainingRun(ABC):
    """The skeleton of a training loop; subclasses set `layout` and implement the hooks below
    (`_setup`, `_start_files`, `_load_checkpoint`, `_train`, `_finish`, `_where`, ...).

    A subclass sets `config` (a `RunSettings` with a `seed`), `model`-side attributes and
    `trainable` / `optimizer` (in `_setup`), and keeps its position in `state` (with `finished`)."""

    layout: RunLayout
    config: RunSettings
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer

    def __init__(self, output_dir: str | Path, accelerator, *, resume: bool, progress: bool,
                 console: Console | None, run_info: dict[str, Any] | None, step_callback: Callable | None):
        self.output_dir = Path(output_dir)
        self.accelerator = accelerator
        self.resume = resume
        self.show_progress = progress
        self.console = console or Console(stderr=True)
        self.run_info = dict(run_info or {})
        self.step_callback = step_callback
        self._interrupt = GracefulInterrupt(self._say)
        self._divergence = DivergenceCheck()
        self._restarted = False  # --resume of a run that stopped before its first checkpoint
        self._at_step_boundary = False  # the state matches the weights (a checkpoint may be taken)

    # -- log and console ------------------------------------------------------------------------
    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def _log(self, event: str, **fields: Any) -> None:
        """Append one JSON object (event, time, fields) to log.jsonl (main process)."""
        if not self.main:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json_text(finite_or_null(record), self.output_dir / LOG_FILE, default=json_default) + "\n")

    def _say(self, text: str) -> None:
        if self.main:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    # -- the folder -----------------------------------------------------------------------------
    def _check_output_dir(self) -> None:
        """The run folder's files are the run's own: a new run refuses a folder holding any of
        them (a user's own log.jsonl included); `--resume` continues from the latest checkpoint,
        or starts afresh, saying so, a run stopped before its first one."""
        out = self.output_dir
        if self.resume and ckpt.latest(out) is None:
            if not (out / RUN_FILE).is_file():
                raise GlipError(f"{out}: no {self.layout.what} to resume ({RUN_FILE} is missing)")
            self.resume = False
            self._restarted = True
        self.layout.check(out, resume=self.resume or self._restarted)

    # -- checkpoints ----------------------------------------------------------------------------
    def _write_checkpoint(self, name: str, info: dict[str, Any]) -> None:
        """Write checkpoint `name` (every process its generator states; the main process the
        weights through `_write_model`, the run state `_state_dict()` with the grad scaler's, and
        the optimiser's) and make it the latest (`info` goes into its pointer); GlipError instead
        when a trained weight is not finite."""
        acc = self.accelerator
        check_finite(self.trainable, "the checkpoint")
        if self.main:
            ckpt.prepare_temporary(self.output_dir, name)
        acc.wait_for_everyone()
        tmp = ckpt.temporary_dir(self.output_dir, name)
        ckpt.save_tensors(tmp / f"rng-{acc.process_index}.safetensors", ckpt.rng_tensors())
        if self.main:
            self._write_model(tmp / ckpt.MODEL_FILE)
            saved = self._state_dict()
            if acc.scaler is not None:
                saved["grad_scaler"] = acc.scaler.state_dict()
            ckpt.save_state(tmp / ckpt.STATE_FILE, saved, self.optimizer.state_dict())
        acc.wait_for_everyone()
        if self.main:
            ckpt.commit(self.output_dir, name, info)

    def _read_checkpoint(self, verb: str) -> tuple[Path, dict[str, Any], dict]:
        """The latest checkpoint's folder, saved state and optimiser state; GlipError
        when it was written with other settings (than the `resume_free` ones: `verb` says how,
        e.g. "pre-trained") or another number of processes."""
        folder = ckpt.latest(self.output_dir)
        saved, optimizer_state = ckpt.load_state(folder / ckpt.STATE_FILE)
        differences = type(self.config).from_dict(saved["config"]).differences(self.config)
        if differences:
            raise GlipError(f"--resume: {self.output_dir} was {verb} with " + "; ".join(differences)
                            + " (a resumed run continues with its own settings)")
        processes = self.accelerator.num_processes
        if saved.get("processes", 1) != processes:
            raise GlipError(f"--resume: the run used {saved.get('processes')} processes, this one {processes} "
                            "(the batch order depends on it)")
        return folder, saved, optimizer_state

    def _restore_checkpoint(self, folder: Path, saved: dict[str, Any], optimizer_state: dict) -> None:
        """After the weights: the optimiser, the grad scaler and this process's generators."""
        acc = self.accelerator
        self.optimizer.load_state_dict(optimizer_state)
        if acc.scaler is not None and "grad_scaler" in saved:
            acc.scaler.load_state_dict(saved["grad_scaler"])
        rng, _ = ckpt.load_tensors(folder / f"rng-{acc.process_index}.safetensors")
        ckpt.restore_rng(rng)

    # -- one optimiser step ---------------------------------------------------------------------
    def _optimizer_step(self, total: torch.Tensor, grad_clip: float) -> None:
        """Backward `total`, clip, and step, unless the loss or gradient is not finite: that
        step is skipped (and counted: `state.skipped_steps`); too many in a row stop the run.
        With fp16 the grad scaler skips overflowing steps itself."""
        acc = self.accelerator
        acc.backward(total)
        norm = acc.clip_grad_norm_(self.trainable, grad_clip) if grad_clip > 0 else torch.tensor(0.0)
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

    # -- the skeleton ---------------------------------------------------------------------------
    def fit(self):
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
                return self._already_finished()
            self._log("resume", **self._resume_fields())
            self._say(f"resuming at {self._where()}")
        else:
            if self._restarted:
                self._say(f"note: {self.output_dir} holds no checkpoint yet (the run stopped before its first one): "
                          "starting it afresh with its own settings")
            self._start_files()
        self._begin_session()
        self._interrupt.install(acc.num_processes)
        try:
            self._train()
            return self._finish()
        except KeyboardInterrupt:
            if acc.num_processes == 1 and self._at_step_boundary and not self.state.finished:
                self._save_on_interrupt()
                self._log("interrupted", **self._position())
                self._say(f"interrupted at {self._where()}; checkpoint saved, continue with "
                          f"--resume --output {self.output_dir}")
            else:
                self._say(f"interrupted; continue from the last checkpoint with --resume --output {self.output_dir}")
            raise
        finally:
            self._interrupt.restore()

    # -- hooks ----------------------------------------------------------------------------------
    @abstractmethod
    def _setup(self) -> None:
        ...

    @abstractmethod
    def _load_checkpoint(self) -> None:
        ...

    @abstractmethod
    def _start_files(self) -> None:
        ...

    @abstractmethod
    def _train(self) -> None:
        ...

    @abstractmethod
    def _finish(self):
        ...

    @abstractmethod
    def _save_checkpoint(self) -> None:
        ...

    @abstractmethod
    def _write_model(self, path: Path) -> None:
        """The checkpoint's weights file."""
        ...

    @abstractmethod
    def _state_dict(self) -> dict[str, Any]:
        """Where the run stands, with its settings (`config`) and `processes`, for the checkpoint."""
        ...

    def _already_finished(self):
        """A `--resume` of a finished run."""
        raise GlipError(f"{self.output_dir}: this {self.layout.what} has finished; nothing to resume")

    @abstractmethod
    def _where(self) -> str:
        """Where the run stands, for the console ("epoch 2, step 3")."""
        ...

    @abstractmethod
    def _position(self) -> dict[str, Any]:
        """Where the run stands, for the log."""
        ...

    def _resume_fields(self) -> dict[str, Any]:
        return self._position()

    def _begin_session(self) -> None:
        """Just before training starts (or continues) in this process."""

    def _save_on_interrupt(self) -> None:
        self._save_checkpoint()
