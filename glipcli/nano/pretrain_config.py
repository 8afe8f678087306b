"""The settings of `glip pretrain` (`glipcli.nano.pretrain` describes the recipe they set).

    config = PretrainConfig(steps=1000, batch_size=8)     # or minutes=60, epochs=2
    config.text_settings(256)                            # what the data side needs of it
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from glipcli.engine.run_settings import RunSettings
from glipcli.engine.run_settings import flag as _flag
from glipcli.errors import GlipError
from glipcli.nano.pretrain_data import TextSettings

SCHEDULES = ("cosine", "step")
MIXED_PRECISION = ("no", "bf16", "fp16")
# Settings that may differ when a run is resumed (they do not change what is computed).
RESUME_FREE = ("num_workers", "checkpoint_minutes", "log_every", "text_cache")


@dataclass(frozen=True)
class PretrainConfig(RunSettings):
    """Pre-training settings (`glipcli.nano.pretrain` describes the recipe). At least one of steps,
    epochs, minutes. Serialised, compared on resume (all but `RESUME_FREE`) as `RunSettings`."""

    resume_free = RESUME_FREE

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
