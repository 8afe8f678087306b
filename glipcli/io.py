"""File output that never leaves a partial file under the final name."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glipcli.errors import GlipError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path) for a temporary file beside `path`, flush it to disk, then rename it
    onto `path`: `path` is either its old self or the complete new file, never a partial one,
    whatever interrupts the write (an error, a full disk, a `kill -9`, a power cut).

    A failing write removes the temporary file and leaves `path` untouched; an operating-system
    error (a full disk: "no space left on device", no permission, ...) becomes a one-line
    GlipError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
        os.close(fd)
    except OSError as exc:
        raise GlipError(f"{path}: cannot write the file ({os_reason(exc)})") from None
    try:
        write(Path(tmp))
        _flush_to_disk(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise GlipError(f"{path}: cannot write the file ({os_reason(exc)}); "
                            "any previous version is unchanged") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_reason(exc: OSError) -> str:
    """The reason of an OSError in a few words ("no space left on device", "permission denied")."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return (exc.strerror or str(exc) or type(exc).__name__).strip().lower()


def _flush_to_disk(path: Path) -> None:
    """fsync the file, so the rename that follows can never publish a file whose data a crash
    of the machine would lose."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # a file system without fsync
            raise
    finally:
        os.close(fd)


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
