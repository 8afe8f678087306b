"""Stopping a training run that has diverged, before it saves non-finite weights.

One optimiser step with a non-finite loss or gradient is skipped (the run goes on: fp16 overflow
and rare bad batches do this); `MAX_NONFINITE_STEPS` such steps in a row mean the weights or the
settings are broken (`--lr 1e30`), and the run stops with one line. Independently, no checkpoint
or best model is ever written while a trained parameter is NaN or infinite: the run stops with
one line and the last good checkpoint stays the one `--resume` continues from."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from glipcli.errors import GlipError

MAX_NONFINITE_STEPS = 5


class DivergenceCheck:
    """Counts consecutive non-finite steps; `step(finite, global_step)` raises once there are
    `MAX_NONFINITE_STEPS` of them."""

    def __init__(self, limit: int = MAX_NONFINITE_STEPS):
        self.limit = limit
        self.in_a_row = 0

    def step(self, finite: bool, global_step: int, loss: float) -> None:
        self.in_a_row = 0 if finite else self.in_a_row + 1
        if self.in_a_row >= self.limit:
            raise GlipError(f"training diverged: the loss or gradient was not finite for {self.in_a_row} steps in a "
                            f"row (step {global_step}, loss {loss}); nothing more is saved, the last checkpoint is "
                            "kept; lower --lr (or check the data)")


def check_finite(parameters: Iterable[torch.Tensor], what: str) -> None:
    """Raise before `what` is saved if any parameter holds NaN or infinity."""
    for p in parameters:
        if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()):
            raise GlipError(f"training diverged: the weights hold NaN or infinite values; {what} not saved, "
                            "the last checkpoint is kept; lower --lr (or check the data)")
