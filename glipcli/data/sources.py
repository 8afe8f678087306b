"""Turning IMAGE arguments (files, folders, glob patterns) into an ordered list of image files."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from glipcli.errors import GlipError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GLOB_CHARS = set("*?[")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def folder_images(folder: Path) -> list[Path]:
    """The image files directly inside `folder` (by suffix, hidden files skipped), sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_file() and _is_image_name(p)), key=lambda p: p.name)


def expand_image_args(args: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders -> the images inside (not recursive), sorted by name; glob
    patterns (`*`, `?`, `[...]`, `**` for any depth; quote them so the shell leaves them alone)
    -> the matching image files, sorted. Order of the arguments is kept; repeats are dropped.

    A file given by name is always tried (whatever its suffix); a folder or pattern contributes
    only files with an image suffix. Raises GlipError for a path that does not exist, a pattern
    that matches no image and a folder without images.
    """
    if not args:
        raise GlipError("no images given")
    found: list[Path] = []
    for arg in args:
        path = Path(arg)
        text = str(arg)
        if path.is_dir():
            images = folder_images(path)
            if not images:
                raise GlipError(f"{path}: folder holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
            found.extend(images)
        elif path.exists():
            found.append(path)
        elif _GLOB_CHARS & set(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            images = [m for m in matches if m.is_file() and _is_image_name(m)]
            if not images:
                raise GlipError(f"{text}: pattern matches no image files")
            found.extend(images)
        else:
            raise GlipError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique
