"""File output that never leaves a partial file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glipcli.errors import GlipError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path) for a temporary file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any, overwrite: bool = False) -> Path:
    """Write `data` as indented JSON, atomically; refuse to replace an existing file unless asked."""
    path = Path(path)
    check_writable(path, overwrite)
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def check_writable(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise GlipError(f"{path}: already exists (pass --overwrite to replace it)")
    if path.is_dir():
        raise GlipError(f"{path}: is a directory, not a file")
