"""File input and output that hold the project's promises: no partial file under a final name,
a one-line error naming the file for every failure (a full disk included, whatever library
wrote), and structures read from files (YAML, JSON) bounded in size and depth before use."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glipcli.errors import GlipError, clip

# Structures read from files: more nesting than this is refused (no reader recurses past it), and
# so is a YAML document whose aliases expand to more values + characters than MAX_EXPANDED_SIZE.
MAX_DEPTH = 64
MAX_EXPANDED_SIZE = 50_000_000
MAX_TEXT_FILE_BYTES = 256 * 1024 * 1024  # prompt files, configs, run records (not COCO annotations)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path) for a temporary file beside `path`, flush it to disk, then rename it
    onto `path`: `path` is either its old self or the complete new file, never a partial one,
    whatever interrupts the write (an error, a full disk, a `kill -9`, a power cut).

    `path` must be a regular file or not exist: a device (`/dev/null`), a folder or a file of
    `/proc` is refused, never replaced. A failing write removes the temporary file and leaves
    `path` untouched; an operating-system error (a full disk: "no space left on device", no
    permission, ...) becomes a one-line GlipError naming `path`, whichever library raised it
    (`write_failure_reason`: safetensors' own error type included)."""
    path = Path(path)
    refuse_special_target(path)
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
        reason = write_failure_reason(exc)
        if reason is not None:
            raise GlipError(f"{path}: cannot write the file ({reason}); "
                            "any previous version is unchanged") from None
        raise


_SYSTEM_ROOTS = ("/proc", "/sys", "/dev")


def refuse_special_target(path: Path) -> None:
    """Refuse to write onto anything but a regular file (or a new one): a device, a pipe, a
    folder, or any file under /proc, /sys or /dev (files there are not data)."""
    real = os.path.realpath(path)
    if is_system_path(real):
        raise GlipError(f"{path}: not a regular file ({real} is a system or device file); choose a file path")
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return  # does not exist (yet): created as a regular file
    if stat.S_ISDIR(mode):
        raise GlipError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise GlipError(f"{path}: not a regular file (a device, pipe or socket); choose a file path")


def is_system_path(real: str) -> bool:
    """Whether a resolved path lies under /proc, /sys or /dev (but not /dev/shm, a plain tmpfs)."""
    if real == "/dev/shm" or real.startswith("/dev/shm/"):
        return False
    return any(real == root or real.startswith(root + "/") for root in _SYSTEM_ROOTS)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_reason(exc: OSError) -> str:
    """The reason of an OSError in a few words ("no space left on device", "permission denied")."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return (exc.strerror or str(exc) or type(exc).__name__).strip().lower()


_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)|\[errno (\d+)\]", re.IGNORECASE)


def write_failure_reason(exc: BaseException) -> str | None:
    """The reason a write failed in a few words, for an OSError and for the error types of
    libraries that report an operating-system error in their own way (safetensors'
    `SafetensorError("... No space left on device (os error 28)")`, a RuntimeError of torch);
    None for an exception that is not about the file system (a bug, an interrupt)."""
    if isinstance(exc, OSError):
        return os_reason(exc)
    if not isinstance(exc, Exception):
        return None
    text = str(exc)
    match = _OS_ERROR_CODE.search(text)
    if match:
        code = int(match.group(1) or match.group(2))
        return "no space left on device" if code == errno.ENOSPC else os.strerror(code).lower()
    if "no space left on device" in text.lower():
        return "no space left on device"
    return None


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


# -- JSON out ----------------------------------------------------------------------------------------
def json_text(data: Any, source: str | Path, **dumps_options: Any) -> str:
    """`json.dumps(data)` refusing NaN and infinity (bare `NaN` tokens are not JSON: most parsers
    reject the file). A non-finite number is a model or training fault, reported as such."""
    try:
        return json.dumps(data, allow_nan=False, **dumps_options)
    except ValueError as exc:
        if "out of range float" not in str(exc).lower():
            raise
        raise GlipError(f"{source}: not written: a value is not a finite number (NaN or infinity); the model "
                        "produced non-finite scores (damaged or diverged weights?)") from None


def finite_or_null(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with its non-finite float values (a diverging loss in a log line) as None."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def write_json(path: str | Path, data: Any, overwrite: bool = False) -> Path:
    """Write `data` as indented JSON, atomically; refuse to replace an existing file unless asked,
    and refuse NaN / infinity (see `json_text`)."""
    path = Path(path)
    check_writable(path, overwrite)
    text = json_text(data, path, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def check_writable(path: Path, overwrite: bool) -> None:
    refuse_special_target(path)
    if path.exists() and not overwrite:
        raise GlipError(f"{path}: already exists (pass --overwrite to replace it)")


# -- structures in ------------------------------------------------------------------------------------
def check_structure(data: Any, source: str | Path, max_depth: int = MAX_DEPTH,
                    max_size: int = MAX_EXPANDED_SIZE) -> Any:
    """Return `data` (parsed YAML or JSON) after checking that it nests at most `max_depth`
    levels and that, with every shared entry counted each time it is reached (YAML aliases are
    shared, so a 400-byte "billion laughs" file expands to 10^9 values), it holds at most
    `max_size` values + string characters; a structure that contains itself is refused.

    Each container is visited once (sizes and heights of shared entries are remembered), so the
    check costs time in proportion to the parsed file, however large it would be expanded, and
    never recurses (a 100 000-level nesting is walked, then refused)."""
    containers = (dict, list, tuple, set)
    size_of: dict[int, int] = {}
    height_of: dict[int, int] = {}
    open_ids: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]

    def children(value: Any) -> list[Any]:
        return [*value.keys(), *value.values()] if isinstance(value, dict) else list(value)

    while stack:
        value, closing = stack.pop()
        if not isinstance(value, containers):
            continue
        key = id(value)
        if closing:
            size, height = 1, 1
            for child in children(value):
                if isinstance(child, containers):
                    size += size_of[id(child)]
                    height = max(height, 1 + height_of[id(child)])
                else:
                    size += 1 + (len(child) if isinstance(child, (str, bytes)) else 0)
            open_ids.discard(key)
            size_of[key], height_of[key] = size, height
            if height > max_depth:
                raise GlipError(f"{source}: nested more than {max_depth} levels deep")
            if size > max_size:
                raise GlipError(f"{source}: too large once expanded (more than {max_size:,} values and "
                                "characters; YAML aliases repeating a structure?)")
            continue
        if key in size_of:
            continue
        if key in open_ids:
            raise GlipError(f"{source}: a structure that contains itself (a YAML alias inside its own anchor)")
        open_ids.add(key)
        stack.append((value, True))
        stack.extend((child, False) for child in children(value)
                     if isinstance(child, containers) and id(child) not in size_of)
    if isinstance(data, (str, bytes)) and len(data) > max_size:
        raise GlipError(f"{source}: too large ({len(data):,} characters)")
    return data


def parse_yaml(text: str, source: str | Path, max_depth: int = MAX_DEPTH,
               max_size: int = MAX_EXPANDED_SIZE) -> Any:
    """`yaml.safe_load` (plain data only: no `!!python` objects) whose every failure is one line
    naming `source` and the line, then `check_structure`."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise GlipError(f"{source}: not valid YAML: {clip(problem)}{line}") from None
    except RecursionError:
        raise GlipError(f"{source}: not valid YAML: nested too deeply") from None
    except Exception as exc:  # a value the YAML types refuse (a date 2020-13-45, a bad base64 !!binary)
        raise GlipError(f"{source}: not valid YAML: {_first_line(exc)}") from None
    return check_structure(data, source, max_depth, max_size)


def parse_json(text: str | bytes, source: str | Path, max_depth: int | None = MAX_DEPTH,
               max_size: int = MAX_EXPANDED_SIZE) -> Any:
    """`json.loads` whose every failure is one line naming `source` (nesting too deep for the
    parser included), then `check_structure` (max_depth None: skip the walk, for large
    annotation files whose size is their file's)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GlipError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise GlipError(f"{source}: not valid JSON: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise GlipError(f"{source}: not valid JSON ({_first_line(exc)})") from None
    if max_depth is None:
        return data
    return check_structure(data, source, max_depth, max_size)


def read_text(path: str | Path, what: str = "file", max_bytes: int | None = MAX_TEXT_FILE_BYTES) -> str:
    """A UTF-8 text file; a missing, unreadable, binary or too large file is one line naming it."""
    path = Path(path)
    try:
        if not path.is_file():
            raise GlipError(f"{path}: no such {what}" if not path.exists() else f"{path}: the {what} is not a file")
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise GlipError(f"{path}: the {what} is too large ({path.stat().st_size:,} bytes; at most "
                            f"{max_bytes:,})")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GlipError(f"{path}: the {what} is not UTF-8 text") from None
    except OSError as exc:
        raise GlipError(f"{path}: cannot read the {what} ({os_reason(exc)})") from None


def read_json(path: str | Path, what: str = "JSON file", max_bytes: int | None = MAX_TEXT_FILE_BYTES,
              max_depth: int | None = MAX_DEPTH) -> Any:
    """`read_text` + `parse_json`."""
    return parse_json(read_text(path, what, max_bytes), path, max_depth)


def read_yaml(path: str | Path, what: str = "YAML file", max_bytes: int | None = MAX_TEXT_FILE_BYTES) -> Any:
    """`read_text` + `parse_yaml`."""
    return parse_yaml(read_text(path, what, max_bytes), path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return clip(text.splitlines()[0]) if text else type(exc).__name__
