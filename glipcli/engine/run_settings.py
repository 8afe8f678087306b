"""What the settings of every training run (`TrainConfig`, `PretrainConfig`) share: they are
written into run.json and each checkpoint as a plain dict, read back from it, and compared when a
run is resumed (a resumed run continues with its own settings, except those that do not change
what is computed: `resume_free`).

    class TrainConfig(RunSettings):   # a frozen dataclass
        resume_free = ("num_workers",)
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from glipcli.errors import GlipError

S = TypeVar("S", bound="RunSettings")


def flag(name: str) -> str:
    """The command-line option of a settings field: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


class RunSettings:
    """Serialisation and resume comparison for a frozen settings dataclass."""

    resume_free: tuple[str, ...] = ()  # fields a resumed run may change

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        """The settings `to_dict` gave; unknown keys (from another version) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def differences(self: S, other: S) -> list[str]:
        """Settings (other than `resume_free`) in which `other` differs, as '--flag mine (given: theirs)'."""
        return [f"{flag(f.name)} {getattr(self, f.name)} (given: {getattr(other, f.name)})"
                for f in dataclasses.fields(self)
                if f.name not in self.resume_free and getattr(self, f.name) != getattr(other, f.name)]

    def resumed_with(self: S, given: dict[str, Any]) -> S:
        """These (a run's stored) settings, with the `resume_free` ones of `given` applied; GlipError
        when `given` sets any other to a different value (None values count as not given)."""
        given = {k: v for k, v in given.items() if v is not None}
        for key, value in given.items():
            if key not in self.resume_free and getattr(self, key) != value:
                raise GlipError(f"--resume: the run was started with {flag(key)} {getattr(self, key)}, "
                                f"not {value} (a resumed run continues with its own settings)")
        return dataclasses.replace(self, **{k: v for k, v in given.items() if k in self.resume_free})
