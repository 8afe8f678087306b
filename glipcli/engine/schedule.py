"""Validation-driven schedule: LR reduction on a plateau and early stopping (official GLIP).

Official `SOLVER.USE_AUTOSTEP` uses `torch.optim.lr_scheduler.ReduceLROnPlateau(mode="max",
factor=SOLVER.GAMMA (0.1), patience=SOLVER.STEP_PATIENCE, min_lr=SOLVER.MIN_LR)` stepped with the
validation AP after each evaluation; `SOLVER.AUTO_TERMINATE_PATIENCE` stops training after that
many evaluations in a row below the best AP (an AP equal to the best counts as no worse, and
saves `model_best`). Both are restated here as small, plainly serialisable state machines (the
plateau rule is torch's: relative threshold 1e-4, no cooldown, an lr changes only by more
than 1e-8).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch.optim import Optimizer

THRESHOLD = 1e-4
EPS = 1e-8


@dataclass
class PlateauSchedule:
    factor: float = 0.1
    patience: int = 3
    min_lr: float = 1e-6
    best: float = -math.inf
    bad_evals: int = 0

    def step(self, value: float, optimizer: Optimizer) -> bool:
        """Record one evaluation; returns whether the learning rates were reduced."""
        if value > self.best * (1.0 + THRESHOLD):
            self.best = value
            self.bad_evals = 0
            return False
        self.bad_evals += 1
        if self.bad_evals <= self.patience:
            return False
        self.bad_evals = 0
        reduced = False
        for group in optimizer.param_groups:
            new = max(group["lr"] * self.factor, self.min_lr)
            if group["lr"] - new > EPS:
                group["lr"] = new
                reduced = True
        return reduced

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class EarlyStopping:
    patience: int = 8
    best: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record one evaluation; returns whether it is the new best (>= the best so far)."""
        if value < self.best:
            self.bad_evals += 1
            return False
        self.best, self.best_epoch, self.bad_evals = value, epoch, 0
        return True

    @property
    def should_stop(self) -> bool:
        return self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
