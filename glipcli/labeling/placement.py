"""Putting the source images into the dataset: copied (default) or linked, under unique names."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from glipcli.errors import GlipError
from glipcli.io import atomic_write, os_reason

MODES = ("copy", "link")


def unique_names(sources: Sequence[str]) -> list[str]:
    """Each source's file name in its split folder: its own name, with `-2`, `-3`, ... added to
    the stem when two sources share a stem (YOLO names a label file after the stem), compared
    case-insensitively (some file systems ignore case)."""
    taken: set[str] = set()
    names = []
    for source in sources:
        path = Path(source)
        stem, n = path.stem, 1
        while stem.lower() in taken:
            n += 1
            stem = f"{path.stem}-{n}"
        taken.add(stem.lower())
        names.append(stem + path.suffix)
    return names


def place_image(source: str | Path, target: Path, mode: str) -> None:
    """`target` becomes a copy of `source` or a symbolic link to its absolute path, replacing
    what was there; a copy appears complete or not at all."""
    source = Path(source)
    if mode == "copy":
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
        return
    if mode != "link":
        raise GlipError(f"unknown image mode {mode!r} (choose from {', '.join(MODES)})")
    tmp = target.with_name(f".{target.name}.link")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        os.symlink(source.resolve(), tmp)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise GlipError(f"{target}: cannot link the image ({os_reason(exc)})") from None
