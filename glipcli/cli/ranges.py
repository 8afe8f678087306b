"""Range checks of numeric command-line options, run by the parser (before anything is loaded).

Every `float` or `int` option of every command takes one of these as its `callback` (a test walks
the command tree and fails on any that does not):

    box_threshold: Annotated[float, typer.Option(callback=ranges.fraction)] = 0.3
    lr: Annotated[Optional[float], typer.Option(callback=ranges.learning_rate)] = None
    seed: Annotated[Optional[int], typer.Option(callback=ranges.seed)] = None
    epochs: Annotated[Optional[int], typer.Option(callback=ranges.count(1))] = None

NaN and infinity are refused by every float check, huge integers by every int check (a count is at
most MAX_COUNT, a seed at most MAX_SEED); a value out of range is one line: `error: --lr must be a
finite number > 0 (got nan)`. None (an option left out) passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import typer

from glipcli.errors import GlipError

MAX_COUNT = 2**31 - 1
MAX_SEED = 2**32 - 1  # every generator glip seeds (torch, Python, numpy) takes it


def _flag(param: Any) -> str:
    opts = getattr(param, "opts", None) or []
    longest = max(opts, key=len) if opts else f"--{str(getattr(param, 'name', 'value')).replace('_', '-')}"
    return longest


def _number_check(low: float | None, high: float | None, low_open: bool, integer: bool, what: str
                  ) -> Callable[..., Any]:
    def check(param: typer.CallbackParam, value: Optional[Any]) -> Any:
        if value is None:
            return value
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if item is None:
                continue
            bad = (not integer and not math.isfinite(item)) or (low is not None and (item <= low if low_open
                                                                                      else item < low)) \
                or (high is not None and item > high)
            if bad:
                raise GlipError(f"{_flag(param)} must be {what} (got {item})")
        return value

    check.glip_range = (low, high, integer)  # type: ignore[attr-defined]  (the tests find the checks by it)
    return check


def finite(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[..., Any]:
    """A float check: finite, within [low, high] (`low_open`: strictly above low)."""
    if low is not None and high is not None:
        what = f"a number from {low:g} to {high:g}" if not low_open else f"a number above {low:g}, at most {high:g}"
    elif low is not None:
        what = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        what = f"a finite number <= {high:g}"
    else:
        what = "a finite number"
    return _number_check(low, high, low_open, False, what)


def count(low: int = 0, high: int = MAX_COUNT) -> Callable[..., Any]:
    """An int check: a whole number from `low` to `high`."""
    return _number_check(low, high, False, True, f"a whole number from {low} to {high}")


fraction = finite(0.0, 1.0)  # thresholds and shares
positive = finite(0.0, low_open=True)  # durations
# Learning rates: above 10 no optimiser step is meaningful, and near 1e38 AdamW's own arithmetic overflows.
learning_rate = finite(0.0, 10.0, low_open=True)
language_learning_rate = finite(0.0, 10.0)  # 0 freezes the text encoder
non_negative = finite(0.0)  # weight decay
learning_rate_factor = finite(0.0, 100.0, low_open=True)  # x a learning rate (freezing is --freeze)
seed = _number_check(0, MAX_SEED, False, True, f"a whole number from 0 to {MAX_SEED}")
