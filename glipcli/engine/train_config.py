"""The settings of a training run (`glip finetune`, `glip prompt-tune`), with official defaults.

Official GLIP fine-tuning on ODinW (README "Full Model Fine-Tuning", "Prompt Tuning", "Linear
Probing"; solver defaults of `maskrcnn_benchmark/config/defaults.py`):

| setting | full / linear probe | prompt tuning |
|---|---|---|
| optimiser | AdamW, full-model grad-norm clip 1.0 | same |
| base lr / language-backbone lr | 1e-4 / 1e-5 | 0.05 (only the prompt offset trains) |
| weight decay | 0.05 (0 for biases, whose lr is x2) | 0.25 |
| batch | 4 images | 4 images |
| LR schedule | x0.1 on a validation-AP plateau (patience 3; 2 with all data), min 1e-6 | same |
| early stopping | patience 8 evaluations (4 with all data) | same |
| epochs / dataset copies | 1-shot 200/8, 3-shot 200/4, 5-shot 200/2, 10-shot 200/1, all data 200/1 | same |
| frozen | full: Swin patch embedding + stage 1 (`FREEZE_CONV_BODY_AT 2`), `cls_logits` | everything but the offset |

Beyond the official protocol, for small models that over-fit a few shots (full fine-tuning only;
the defaults keep the official behaviour): `freeze` parts of the model (`PARTS`: the image
encoder `backbone` = Swin + FPN, the `language` backbone, the X-MHA `fusion` layers, the rest of
the `head`), and scale the base lr of a part (`backbone_lr_factor`, `fusion_lr_factor`,
`head_lr_factor`; the language backbone has its own `language_lr`, 0 meaning frozen).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from glipcli.data.fewshot import default_patience, default_schedule
from glipcli.engine.run_settings import RunSettings, flag as _flag
from glipcli.errors import GlipError, excerpt

TASKS = ("full", "linear-probe", "prompt")
MIXED_PRECISION = ("no", "bf16", "fp16")
# Settings that may differ when a run is resumed (they do not change what is computed).
RESUME_FREE = ("num_workers",)
MAX_SEED = 2**32 - 1  # every generator seeded from it (torch, Python) takes it
# The parts of GLIP that `--freeze` names (see `glipcli.engine.trainable.part_of`).
PARTS = ("backbone", "language", "fusion", "head")
LR_FACTORS = ("backbone_lr_factor", "fusion_lr_factor", "head_lr_factor")


def parse_parts(values) -> tuple[str, ...]:
    """`--freeze` values (each one part or several separated by commas) as a tuple in `PARTS`
    order, each part once; GlipError naming an unknown part."""
    if isinstance(values, str):
        values = [values]
    names = set()
    for value in values or ():
        if not isinstance(value, str):
            raise GlipError(f"--freeze takes part names ({', '.join(PARTS)}), got {excerpt(value)}")
        for name in value.split(","):
            name = name.strip().lower()
            if name not in PARTS:
                raise GlipError(f"--freeze: unknown part {excerpt(name)}; choose from {', '.join(PARTS)}")
            names.add(name)
    return tuple(p for p in PARTS if p in names)


@dataclass(frozen=True)
class TrainConfig(RunSettings):
    """None means "the official default for this task and number of shots" (see `resolved`).
    Serialised, compared on resume (all but `RESUME_FREE`) as `RunSettings`."""

    resume_free = RESUME_FREE

    task: str = "full"
    shots: int = 0
    seed: int = 3
    val_shots: int | None = None  # K-shot validation subset (None: as `shots`; 0: all)
    epochs: int | None = None
    copies: int | None = None
    batch_size: int = 4
    lr: float | None = None
    language_lr: float = 1e-5
    weight_decay: float | None = None
    bias_lr_factor: float = 2.0
    bias_weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_patience: int | None = None
    stop_patience: int | None = None
    lr_factor: float = 0.1
    min_lr: float = 1e-6
    freeze_swin_stages: int = 2
    freeze: tuple[str, ...] = ()  # parts of `PARTS` frozen (full fine-tuning)
    backbone_lr_factor: float = 1.0  # x the base lr (full fine-tuning)
    fusion_lr_factor: float = 1.0
    head_lr_factor: float = 1.0
    augment: bool = True  # official multi-scale resize + flip; False: test-size images, no flip
    eval_batch_size: int = 4
    mixed_precision: str = "no"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise GlipError(f"unknown training task {excerpt(self.task)}; choose one of {', '.join(TASKS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise GlipError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)} "
                            f"(got {excerpt(self.mixed_precision)})")
        for name in ("shots", "seed", "batch_size", "epochs", "copies", "val_shots", "lr_patience",
                     "stop_patience", "freeze_swin_stages", "eval_batch_size", "num_workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise GlipError(f"{_flag(name)} must be a whole number (got {excerpt(value)})")
        for name, low in (("shots", 0), ("batch_size", 1), ("epochs", 1), ("copies", 1), ("val_shots", 0),
                          ("lr_patience", 0), ("stop_patience", 1), ("eval_batch_size", 1), ("num_workers", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise GlipError(f"{_flag(name)} must be at least {low} (got {value})")
        for name in ("lr", "language_lr", "weight_decay", "grad_clip", "lr_factor", "min_lr", "bias_lr_factor",
                     "bias_weight_decay"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                      or not math.isfinite(value) or value < 0):
                raise GlipError(f"{_flag(name)} must be a finite number >= 0 (got {excerpt(value)})")
        if not 0 <= self.seed <= MAX_SEED:
            raise GlipError(f"--seed must be a whole number from 0 to {MAX_SEED} (got {self.seed})")
        object.__setattr__(self, "freeze", parse_parts(self.freeze))  # run.json stores a list
        for name in LR_FACTORS:
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                    or value <= 0):
                raise GlipError(f"{_flag(name)} must be a finite number > 0 (got {excerpt(value)}); "
                                "--freeze freezes a part")
        changed = [_flag(n) for n in LR_FACTORS if getattr(self, n) != 1.0] + (["--freeze"] if self.freeze else [])
        if changed and self.task != "full":
            raise GlipError(f"{', '.join(changed)}: for full fine-tuning only (this run's task is {self.task!r})")
        for name in LR_FACTORS:
            part = name.removesuffix("_lr_factor")
            if part in self.freeze and getattr(self, name) != 1.0:
                raise GlipError(f"{_flag(name)} {getattr(self, name)} has no effect: --freeze {part} freezes it")

    def resumed_with(self, given: dict) -> "TrainConfig":
        """As `RunSettings.resumed_with`, `freeze` compared as a set of parts (any order, list or tuple)."""
        if given.get("freeze") is not None:
            given = {**given, "freeze": parse_parts(given["freeze"])}
        return super().resumed_with(given)

    @property
    def frozen_parts(self) -> tuple[str, ...]:
        """The parts kept frozen in full fine-tuning: `freeze`, and the language backbone when
        `language_lr` is 0 (the same thing said another way)."""
        language = ("language",) if self.task == "full" and self.language_lr == 0 else ()
        return parse_parts(self.freeze + language)

    def resolved(self) -> "TrainConfig":
        """Every None replaced by its official default."""
        epochs, copies = default_schedule(self.shots)
        lr_patience, stop_patience = default_patience(self.shots)
        prompt = self.task == "prompt"
        return dataclasses.replace(
            self,
            epochs=self.epochs if self.epochs is not None else epochs,
            copies=self.copies if self.copies is not None else copies,
            val_shots=self.val_shots if self.val_shots is not None else self.shots,
            lr=self.lr if self.lr is not None else (0.05 if prompt else 1e-4),
            weight_decay=self.weight_decay if self.weight_decay is not None else (0.25 if prompt else 0.05),
            lr_patience=self.lr_patience if self.lr_patience is not None else lr_patience,
            stop_patience=self.stop_patience if self.stop_patience is not None else stop_patience,
        )
