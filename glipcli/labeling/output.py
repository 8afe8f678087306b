"""The dataset folder: what a run finds there, and getting it ready without losing anything.

    OUT/.glip-label/settings.json        what the labels depend on (model, prompt, threshold, ...)
    OUT/.glip-label/labels-<rank>.jsonl  each process's journal
    OUT/labels.json                      written last: the dataset is complete

A folder with a journal but no `labels.json` holds an interrupted run: the same command resumes
it (with other settings it is refused, `--overwrite` starts afresh). A complete dataset is
replaced only with `--overwrite`; its journal is reused when the settings agree, so writing it
again in another format, split or filter does not run the model again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glipcli.errors import GlipError
from glipcli.io import write_json
from glipcli.labeling.journal import clear_journals
from glipcli.outputs import OutputGuard

WORK_DIR = ".glip-label"
SETTINGS_FILE = "settings.json"
SUMMARY_JSON = "labels.json"
SUMMARY_MD = "labels.md"


@dataclass(frozen=True)
class OutputPlan:
    """What to do with the folder. resume: the journals hold labels for these settings;
    clear: they hold other settings' labels (dropped); replace: names of the previous
    dataset's entries, removed before writing."""

    output: Path
    resume: bool = False
    clear: bool = False
    replace: list[str] = field(default_factory=list)

    @property
    def work_dir(self) -> Path:
        return self.output / WORK_DIR


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def plan_output(output: Path, settings: dict[str, Any], overwrite: bool,
                inputs: Sequence[str | Path] = ()) -> OutputPlan:
    """Decide, reading only, what the run does with `output`. inputs: the images; none may lie
    inside the dataset folder, whose contents a run replaces."""
    OutputGuard(overwrite=overwrite, inputs=inputs).folder(output, "--output")  # not a file, input or system folder
    root = Path(os.path.realpath(output))
    for image in inputs:
        if Path(os.path.realpath(image)).is_relative_to(root):
            raise GlipError(f"{image}: an input image lies inside the output folder {output}, which the run "
                            "writes over; label from elsewhere or choose another --output")
    work = output / WORK_DIR
    finished = (output / SUMMARY_JSON).is_file()
    if finished and not overwrite:
        raise GlipError(f"{output}: already holds a labelled dataset (pass --overwrite to replace it)")
    if output.is_dir() and not finished and not work.is_dir() and any(output.iterdir()) and not overwrite:
        raise GlipError(f"{output}: the folder holds other files; give a new or empty folder "
                        "(or --overwrite to write into it)")
    stored = _read_json(work / SETTINGS_FILE) if work.is_dir() else None
    same = stored == settings
    if stored is not None and not same and not overwrite:
        keys = sorted(k for k in set(settings) | set(stored) if settings.get(k) != stored.get(k))
        raise GlipError(f"{output}: holds an unfinished labelling run with other settings "
                        f"({', '.join(keys)}); rerun it as it was to resume, or pass --overwrite to start afresh")
    replace: list[str] = []
    if finished:
        previous = _read_json(output / SUMMARY_JSON) or {}
        names = previous.get("written", []) if isinstance(previous, dict) else []
        replace = [n for n in names if isinstance(n, str) and n and "/" not in n and "\\" not in n
                   and n not in (".", "..", WORK_DIR)]
    return OutputPlan(output, resume=stored is not None and same, clear=stored is not None and not same,
                      replace=replace)


def prepare_output(plan: OutputPlan, settings: dict[str, Any]) -> None:
    """Make the folder ready (main process only): the previous dataset's completion mark and
    entries removed, stale journals dropped, the settings recorded."""
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    (plan.output / SUMMARY_JSON).unlink(missing_ok=True)  # first: a crash from here on leaves a resumable run
    for name in plan.replace + [SUMMARY_MD]:
        path = plan.output / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if plan.clear:
        clear_journals(plan.work_dir)
    if not plan.resume:
        write_json(plan.work_dir / SETTINGS_FILE, settings, overwrite=True)
