"""The per-process journal: one JSON line per labelled image, appended as each completes.

A run killed at any moment loses at most the line being written; `Journal.open` cuts such a
partial last line off before appending again, and `read_journals` skips it. A re-run reads every
process's journal and labels only the images none of them holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from glipcli.errors import GlipError
from glipcli.io import os_reason
from glipcli.labeling.records import ImageLabels

JOURNAL_GLOB = "labels-*.jsonl"


def journal_path(work_dir: Path, rank: int) -> Path:
    return work_dir / f"labels-{rank}.jsonl"


class Journal:
    """Appends `ImageLabels` to process `rank`'s journal, each line flushed to disk at once."""

    def __init__(self, work_dir: Path, rank: int):
        self.path = journal_path(work_dir, rank)
        try:
            self._drop_partial_line()
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise GlipError(f"{self.path}: cannot write the labelling journal ({os_reason(exc)})") from None

    def _drop_partial_line(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def append(self, labels: ImageLabels) -> None:
        self._file.write(json.dumps(labels.to_json(), separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_journal(path: Path) -> Iterable[ImageLabels]:
    """The complete lines of one journal (a partial last line, from a killed run, is skipped)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return
            try:
                yield ImageLabels.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError, IndexError):
                raise GlipError(f"{path}: a line is not a labelling record; the journal was edited or "
                                "belongs to something else (pass --overwrite to start afresh)") from None


def read_journals(work_dir: Path) -> dict[str, ImageLabels]:
    """Every finished image of every process's journal, by key."""
    done: dict[str, ImageLabels] = {}
    for path in sorted(work_dir.glob(JOURNAL_GLOB)):
        for labels in read_journal(path):
            done.setdefault(labels.key, labels)
    return done


def clear_journals(work_dir: Path) -> None:
    for path in work_dir.glob(JOURNAL_GLOB):
        path.unlink()
