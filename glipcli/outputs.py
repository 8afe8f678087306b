"""The output guard: every command that writes checks ALL its outputs here, before any work.

    from glipcli.outputs import OutputGuard

    guard = OutputGuard(overwrite=overwrite, inputs=[*images, coco_gt, prompt_file, weights])
    json_path = guard.file(json_out, "--json")              # None passes through as None
    vis_dir = guard.folder(save_vis, "--save-vis")          # a folder to write new files into
    guard.file(vis_dir / "b.png", "--save-vis", source="b.gif")   # each rendering, by name
    guard.run_folder(output, ["run.json", "log.jsonl", "checkpoints"], "--output", resume=resume)
    ...load the model, run, then write with glipcli.io.atomic_write / write_json...

Each call checks at once and raises a one-line GlipError; nothing is written by the guard itself.
The rules, for every output path (resolved: `~`, `..` and symbolic links followed):

- it is not an input of the run (not even with `--overwrite`: an input is never written over);
- no two outputs are the same file (`--json out.json --coco-results ./out.json`);
- it is a regular file or does not exist: devices (`/dev/null`), pipes, folders and anything
  under /proc, /sys or /dev are refused;
- an existing file is replaced only with `overwrite=True` (`--overwrite`), and a run folder's
  files only with `resume=True` (they are the run's own) or `overwrite=True`; a file a run would
  append to (a log) counts as replaced;
- its folder exists or can be created, and is writable.

`OutputGuard.outputs` lists the resolved output paths checked so far (e.g. to name them in a
summary). Commands to come (`glip label`, `glip export`, `glip data download`) adopt it the same
way: one guard per command invocation, inputs first, then one call per output.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from glipcli.errors import GlipError
from glipcli.io import is_system_path, refuse_special_target


def resolved(path: str | Path) -> Path:
    """The real absolute path (user folder, `..` and symbolic links resolved; the file need not exist)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


class OutputGuard:
    """Checks a command's output paths against each other, its inputs and the file system.

    overwrite: existing output files may be replaced (`--overwrite`). inputs: the files the run
    reads (None entries are ignored; folders may be given: then no output may be that folder)."""

    def __init__(self, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()):
        self.overwrite = overwrite
        self._inputs: dict[Path, str] = {}
        self._outputs: dict[Path, str] = {}
        self.add_inputs(inputs)

    @property
    def outputs(self) -> list[Path]:
        return list(self._outputs)

    def add_inputs(self, paths: Iterable[str | Path | None]) -> None:
        """Register more input files (e.g. once a folder argument has been expanded)."""
        for path in paths:
            if path is not None:
                self._inputs.setdefault(resolved(path), str(path))

    def file(self, path: str | Path | None, option: str, *, source: str | Path | None = None,
             replace: bool | None = None) -> Path | None:
        """Check one output file; return `path` as given (None: no such output, nothing checked).

        source: the input this output is made from (named in the message, e.g. the image a
        rendering is drawn from). replace: may an existing file be replaced (default: the
        guard's `overwrite`)."""
        if path is None:
            return None
        path = Path(path)
        real = resolved(path)
        made_from = f" (from {source})" if source is not None else ""
        if real in self._inputs:
            raise GlipError(f"{option} {path}{made_from}: is also an input of this run ({self._inputs[real]}); "
                            "an input is never written over: choose another output")
        if real in self._outputs:
            other = self._outputs[real]
            raise GlipError(f"{option} {path}{made_from}: the same file as the output of {other}; "
                            "give each output its own file")
        try:
            refuse_special_target(path)
        except GlipError as exc:
            raise GlipError(f"{option} {exc}") from None
        allowed = self.overwrite if replace is None else replace
        if real.exists() and not allowed:
            raise GlipError(f"{option} {path}{made_from}: already exists (pass --overwrite to replace it)")
        _check_parent(path, real.parent, option)
        self._outputs[real] = option
        return path

    def folder(self, path: str | Path | None, option: str) -> Path | None:
        """Check an output folder (absent, or a folder; not an input; creatable and writable).
        The files written into it are checked one by one with `file` / `run_folder`."""
        if path is None:
            return None
        path = Path(path)
        real = resolved(path)
        if real in self._inputs:
            raise GlipError(f"{option} {path}: is also an input of this run; choose another folder")
        if real.exists() and not real.is_dir():
            raise GlipError(f"{option} {path}: exists and is not a folder")
        if is_system_path(str(real)):
            raise GlipError(f"{option} {path}: a system folder ({real}); choose another folder")
        _check_parent(path, real if real.exists() else real.parent, option)
        return path

    def run_folder(self, folder: str | Path, names: Iterable[str], option: str, *, resume: bool = False,
                   what: str = "run") -> Path:
        """Check a run folder and every file or subfolder `names` a run writes into it: one that
        exists is refused unless `resume` (it is the run's own; the caller checks that the run is
        one to continue) or the guard's `overwrite`."""
        folder = Path(folder)
        self.folder(folder, option)
        for name in names:
            target = folder / name
            real = resolved(target)
            if real in self._inputs:
                raise GlipError(f"{option} {folder}: the {what} would write {name}, an input of this run; "
                                "choose another folder")
            if real in self._outputs:
                raise GlipError(f"{option} {folder}: {name} is also the output of {self._outputs[real]}")
            if real.exists():
                if not real.is_dir():
                    refuse_special_target(target)
                if not (resume or self.overwrite):
                    shown = f"{name}/" if real.is_dir() else name
                    raise GlipError(f"{folder}: already holds a {what} ({shown}, or a file of yours by that name); "
                                    f"pass --resume to continue it, or choose another {option}")
            self._outputs[real] = option
        return folder


def _check_parent(path: Path, folder: Path, option: str) -> None:
    """The folder an output goes into must exist as a writable folder or be creatable."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise GlipError(f"{option} {path}: cannot be created ({existing} is a file, not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GlipError(f"{option} {path}: cannot write into {existing} (permission denied)")
