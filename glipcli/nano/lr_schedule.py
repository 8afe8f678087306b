"""The learning-rate schedule of pre-training: linear warm-up, then cosine decay (or the official
multi-step schedule), over a horizon that may be known only after calibration."""

from __future__ import annotations

import math

from glipcli.nano.pretrain_config import PretrainConfig

STEP_MILESTONES = (0.67, 0.89)  # official GLIP pre-training SOLVER.STEPS, as fractions of the run


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
