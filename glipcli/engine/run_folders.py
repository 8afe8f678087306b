"""Default run folders of the training commands: `runs/<command>/<data-name>`, then `-2`, `-3`, ...
(the convention of ultralytics), never a folder that already holds something.

    new_run_folder("finetune", "egohands")     # runs/finetune/egohands, or -2, -3 ... if taken
    latest_run_folder("finetune", "egohands")  # the newest of those holding a run (for --resume)
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from glipcli.data.dataset_source import resolve_dataset
from glipcli.errors import GlipError

RUNS_ROOT = Path("runs")
RUN_FILE = "run.json"  # what every training run writes first (trainer and pretrainer)


def run_name(text: str) -> str:
    """A folder-safe name: path separators and spaces become `_`, other odd characters dropped."""
    name = re.sub(r"[\s/\\:]+", "_", text.strip())
    name = re.sub(r"[^\w.+-]", "", name).strip("._")
    return name or "data"


def _numbered(base: Path, name: str) -> list[tuple[int, Path]]:
    """(number, folder) of `base/name` (1), `base/name-2`, ... that exist, by number."""
    if not base.is_dir():
        return []
    out = []
    pattern = re.compile(re.escape(name) + r"(?:-(\d+))?")
    for child in base.iterdir():
        m = pattern.fullmatch(child.name)
        if m and child.is_dir():
            out.append((int(m.group(1) or 1), child))
    return sorted(out)


def new_run_folder(command: str, name: str, root: str | Path = RUNS_ROOT) -> Path:
    """The first of `root/command/name`, `name-2`, `name-3`, ... that does not exist or is an
    empty folder."""
    base, name = Path(root) / command, run_name(name)
    for number in itertools.count(1):
        folder = base / (name if number == 1 else f"{name}-{number}")
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            return folder
    raise AssertionError("unreachable")


def latest_run_folder(command: str, name: str | None = None, root: str | Path = RUNS_ROOT) -> Path:
    """The most recently written run (a folder holding run.json) under `root/command`, among
    `name`, `name-2`, ... when `name` is given; GlipError when there is none."""
    base = Path(root) / command
    if name is not None:
        candidates = [folder for _, folder in _numbered(base, run_name(name))]
    else:
        candidates = [c for c in base.iterdir() if c.is_dir()] if base.is_dir() else []
    runs = [c for c in candidates if (c / RUN_FILE).is_file()]
    if not runs:
        where = base / run_name(name) if name is not None else base
        raise GlipError(f"--resume: no run to resume under {where}*; pass --output RUN_DIR")
    return max(runs, key=lambda c: (c / RUN_FILE).stat().st_mtime)


def data_name(data: str | Path | None = None, train_ann: str | Path | None = None) -> str:
    """The name a run on this data is called after: the dataset's name (an ODinW dataset's
    registry name), else the folder of the training annotations."""
    if data is not None:
        return run_name(resolve_dataset(data).name)
    if train_ann is not None:
        ann = Path(train_ann).resolve()
        folder = ann.parent.parent if ann.parent.name in ("train", "training") else ann.parent
        return run_name(folder.name or ann.stem)
    return "data"
