"""One benchmark run's model and console.

`BenchSession` loads the chosen model once, when something is left to run, wraps it in a predictor
(dropped again before training, so the base model's device memory is free), and prints plain
messages and progress bars on the run's console (nothing without one; bars only on a terminal).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from glipcli.bench.model import BenchModel
from glipcli.predictor import GLIPPredictor


def say(console, text: str) -> None:
    """Print one plain line (no markup, no highlighting) on a rich console; nothing without one."""
    if console is not None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)


def shows_progress(console, progress: bool) -> bool:
    """Whether a progress bar is drawn: asked for, and the console is a terminal."""
    return bool(progress and console is not None and getattr(console, "is_terminal", False))


def free_memory() -> None:
    """Give freed tensors' memory back (the CUDA cache too)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class BenchSession:
    """The model of a benchmark run, loaded once, and the run's console.

    cast_weights: passed to `GLIPPredictor` (False keeps the base model in float32 under autocast,
        for runs that also fine-tune it). configure: called on the predictor once it is made.
    eval_batch_size: images per forward pass when predicting.
    """

    def __init__(self, model: BenchModel, console=None, progress: bool = False, *, eval_batch_size: int = 1,
                 cast_weights: bool | None = None, configure: Callable[[GLIPPredictor], Any] | None = None):
        self.choice = model
        self.console = console
        self.show_progress = shows_progress(console, progress)
        self.device, self.dtype = model.check_device()
        self.eval_batch_size = eval_batch_size
        self.cast_weights = cast_weights
        self.configure = configure
        self._base = None
        self._predictor: GLIPPredictor | None = None

    def say(self, text: str) -> None:
        say(self.console, text)

    def trainer_console(self) -> Console:
        """The console for a training run inside the benchmark (a silent one without a console)."""
        return self.console if self.console is not None else Console(quiet=True)

    def progress_bar(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=self.console, disable=not self.show_progress, transient=True)

    def base(self):
        """The chosen GLIP, loaded on first use."""
        if self._base is None:
            self.say(f"loading {self.choice.label}")
            self._base = self.choice.load()
        return self._base

    def predictor(self) -> GLIPPredictor:
        if self._predictor is None:
            self._predictor = GLIPPredictor(self.base(), device=self.device, dtype=self.dtype,
                                            cast_weights=self.cast_weights)
            if self.configure is not None:
                self.configure(self._predictor)
        return self._predictor

    def release_predictor(self) -> None:
        """Give the base model's device memory back before training (it stays on the CPU)."""
        if self._predictor is not None:
            self._predictor = None
            self.base().to("cpu")
            free_memory()
