"""Benchmark results: one cell per (dataset, shots, seed, mode, prompts), summaries over seeds and datasets,
and the result files (JSON + CSV + Markdown), written atomically; finished cells are skipped on re-run.

Cells (`CellKey`): `shots` is K (K-shot fine-tuning), `ZERO_SHOT` (0: no training) or `ALL_DATA`
(-1: fine-tuning on the full train split); `mode` is `full`, `prompt` or `linear` (`zero-shot` for
zero-shot cells, whose seed is None: nothing random happens); `prompts` is the prompt label
(`plain`, `manual`, or `file` / `names` for suite-file datasets).

Storage (`ResultsStore`): `OUT/cells/<cell>.json`, one file per finished cell, each written
atomically, so an interrupted run loses at most the cell in progress and a re-run skips the others;
`OUT/run.json` records what the run is (model, weights, ...): re-using OUT for a different run is a
GlipError. `OUT/results.{json,csv,md}` are rewritten from the cells after each one.

Summaries: per dataset and setting (shots, mode, prompts), AP and AP50 as mean ± std over the seeds
run; the unweighted average over the datasets, per seed, then mean ± std over the seeds for which
every dataset has a result (an average over fewer datasets is not given: `partial`). Std is the
population std (numpy's default, ddof=0) — the paper does not say which it reports. Cell files hold
pycocotools' fractions; summaries and tables are in percent, like the paper's numbers printed beside
them (`glipcli.bench.paper`).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glipcli.bench import paper
from glipcli.bench.paper import PaperValue
from glipcli.errors import GlipError, clip
from glipcli.io import atomic_write, json_text, read_json
from glipcli.outputs import OutputGuard

ZERO_SHOT = 0
ALL_DATA = paper.ALL_DATA
MODES = ("full", "prompt", "linear")
ZERO_SHOT_MODE = "zero-shot"
AVERAGE = "Average"
CELLS_DIR = "cells"
RUN_FILE = "run.json"
TABLE_FILES = ("results.json", "results.csv", "results.md")


def shots_label(shots: int) -> str:
    if shots == ZERO_SHOT:
        return "zero-shot"
    if shots == ALL_DATA:
        return "full data"
    return f"{shots}-shot"


@dataclass(frozen=True, order=True)
class SettingKey:
    """A column of the tables: shots, tuning mode, prompts."""

    shots: int
    mode: str
    prompts: str

    @property
    def label(self) -> str:
        if self.shots == ZERO_SHOT:
            return f"zero-shot, {self.prompts}"
        return f"{shots_label(self.shots)}, {self.mode}, {self.prompts}"


@dataclass(frozen=True, order=True)
class CellKey:
    """One benchmark cell. Build it with `CellKey.make` (canonical zero-shot form)."""

    dataset: str
    shots: int
    seed: int | None
    mode: str
    prompts: str

    @classmethod
    def make(cls, dataset: str, shots: int, seed: int | None, mode: str, prompts: str) -> "CellKey":
        if isinstance(shots, bool) or not isinstance(shots, int) or (shots < 0 and shots != ALL_DATA):
            raise GlipError(f"shots must be a whole number >= 0 or ALL_DATA (got {shots!r})")
        if not dataset or not prompts:
            raise GlipError("a result cell needs a dataset name and a prompt label")
        if shots == ZERO_SHOT:
            return cls(dataset, ZERO_SHOT, None, ZERO_SHOT_MODE, prompts)
        if mode not in MODES:
            raise GlipError(f"tuning mode must be one of {', '.join(MODES)} (got {mode!r})")
        if seed is None or isinstance(seed, bool) or not isinstance(seed, int):
            raise GlipError(f"a fine-tuning cell needs an integer seed (got {seed!r})")
        return cls(dataset, shots, seed, mode, prompts)

    @property
    def setting(self) -> SettingKey:
        return SettingKey(self.shots, self.mode, self.prompts)

    @property
    def file_stem(self) -> str:
        """A file name for the cell: readable, unique per key, safe on every file system."""
        shots = "zero" if self.shots == ZERO_SHOT else "all" if self.shots == ALL_DATA else f"shot{self.shots}"
        seed = "" if self.seed is None else f"__seed{self.seed}"
        raw = f"{self.dataset}__{shots}{seed}__{self.mode}__{self.prompts}"
        return re.sub(r"[^A-Za-z0-9._+-]", lambda m: f"%{ord(m.group()):02x}", raw)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "shots": self.shots, "seed": self.seed, "mode": self.mode,
                "prompts": self.prompts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CellKey":
        return cls.make(str(data["dataset"]), int(data["shots"]),
                        None if data.get("seed") is None else int(data["seed"]), str(data["mode"]),
                        str(data["prompts"]))


@dataclass(frozen=True)
class CellResult:
    """The result of one cell: AP and AP50 (fractions, pycocotools), all metrics, anything else to keep
    (image count, seconds, checkpoint path, notes)."""

    key: CellKey
    ap: float
    ap50: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key.to_dict(), "ap": self.ap, "ap50": self.ap50, "metrics": dict(self.metrics),
                "info": dict(self.info)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CellResult":
        return cls(CellKey.from_dict(data["key"]), float(data["ap"]), float(data["ap50"]),
                   {k: float(v) for k, v in data.get("metrics", {}).items()}, dict(data.get("info", {})))


# -- storage ---------------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class ResultsStore:
    """The cells of one benchmark run under `out_dir` (see the module docstring).

    run: what identifies the run (model, weights, suite, ...). Written to `run.json` the first time;
    a later store on the same folder must agree on every key both give, else GlipError."""

    def __init__(self, out_dir: str | Path, run: Mapping[str, Any] | None = None):
        self.out_dir = Path(out_dir)

        # A folder with our run.json is a benchmark run to continue (checked against `run` below);
        # any other holding our file names (a user's own results.md) is never written into.
        OutputGuard().run_folder(self.out_dir, (RUN_FILE, CELLS_DIR, *TABLE_FILES), "--output",
                                 resume=(self.out_dir / RUN_FILE).is_file(), what="benchmark run")
        self.cells_dir = self.out_dir / CELLS_DIR
        self.run = dict(run or {})
        run_path = self.out_dir / RUN_FILE
        if run_path.is_file():
            stored = read_json(run_path, "benchmark run record")
            if not isinstance(stored, dict):
                raise GlipError(f"{run_path}: not a benchmark run record; delete it or use another output folder")
            differ = [k for k in self.run if k in stored and stored[k] != self.run[k]]
            if differ:
                shown = ", ".join(f"{k}={stored[k]!r} (now {self.run[k]!r})" for k in differ)
                raise GlipError(f"{self.out_dir} holds results of a different run: {shown}; "
                                "use another output folder")
            self.run = {**stored, **self.run}
        if self.run:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_text(run_path, json_text(self.run, run_path, indent=2, sort_keys=True, default=str) + "\n")

    def path(self, key: CellKey) -> Path:
        return self.cells_dir / f"{key.file_stem}.json"

    def has(self, key: CellKey) -> bool:
        """True when the cell is finished (a re-run skips it)."""
        return self.path(key).is_file()

    def get(self, key: CellKey) -> CellResult | None:
        path = self.path(key)
        return self._read(path) if path.is_file() else None

    def add(self, result: CellResult) -> Path:
        """Record a finished cell (atomically; replaces an earlier result of the same cell)."""
        for name, value in (("ap", result.ap), ("ap50", result.ap50)):
            if not isinstance(value, (int, float)) or math.isnan(value):
                raise GlipError(f"cell {result.key.file_stem}: {name} must be a number (got {value!r})")
        path = self.path(result.key)
        _write_text(path, json_text(result.to_dict(), path, indent=2, sort_keys=True, default=str) + "\n")
        return path

    def pending(self, keys: Sequence[CellKey]) -> list[CellKey]:
        """The cells of `keys` not finished yet, in order."""
        return [k for k in keys if not self.has(k)]

    def cells(self) -> list[CellResult]:
        """Every finished cell, sorted by key."""
        if not self.cells_dir.is_dir():
            return []
        out = [self._read(p) for p in sorted(self.cells_dir.glob("*.json"))]
        return sorted(out, key=lambda c: (c.key.dataset, c.key.setting, -1 if c.key.seed is None else c.key.seed))

    def _read(self, path: Path) -> CellResult:
        try:
            result = CellResult.from_dict(read_json(path, "result cell"))
        except (KeyError, TypeError, ValueError, AttributeError, GlipError) as exc:
            raise GlipError(f"{path}: unreadable result cell ({clip(exc, 200)}); delete it to run the cell again"
                            ) from None
        if path.name != f"{result.key.file_stem}.json":
            raise GlipError(f"{path}: holds the cell {result.key.file_stem}, not the one its name says")
        return result

    def write_tables(self, datasets: Sequence[str] | None = None, model: str | None = None,
                     paper_names: Mapping[str, str | None] | None = None, suite: str | None = None) -> "TableFiles":
        """Summarise every finished cell and (re)write results.json / .csv / .md."""
        cells = self.cells()
        summary = summarize(cells, datasets, model, paper_names, suite)
        return write_tables(self.out_dir, summary, cells, self.run)


# -- summaries -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """Mean and std (population) of values in percent, and how many there were."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        pct = [100.0 * v for v in values]
        mean = sum(pct) / len(pct)
        std = math.sqrt(sum((v - mean) ** 2 for v in pct) / len(pct)) if len(pct) > 1 else None
        return cls(mean, std, len(pct))

    def format(self) -> str:
        return f"{self.mean:.1f}" + (f" ± {self.std:.1f}" if self.std is not None else "")


@dataclass(frozen=True)
class SummaryRow:
    """One dataset (or the average) in one setting."""

    dataset: str
    setting: SettingKey
    ap: Stat | None
    ap50: Stat | None
    seeds: tuple[int | None, ...] = ()
    paper: PaperValue | None = None
    partial: str | None = None  # for the average: why it is not given (e.g. "3/13 datasets")

    def to_dict(self) -> dict[str, Any]:
        stat = lambda s: None if s is None else {"mean": s.mean, "std": s.std, "n": s.n}  # noqa: E731
        return {"dataset": self.dataset, "shots": self.setting.shots, "mode": self.setting.mode,
                "prompts": self.setting.prompts, "setting": self.setting.label, "seeds": list(self.seeds),
                "ap": stat(self.ap), "ap50": stat(self.ap50), "partial": self.partial,
                "paper_ap": None if self.paper is None else {"value": self.paper.value, "std": self.paper.std,
                                                            "source": self.paper.source}}


@dataclass(frozen=True)
class Summary:
    datasets: tuple[str, ...]
    settings: tuple[SettingKey, ...]
    rows: tuple[SummaryRow, ...]  # datasets, then AVERAGE, per setting
    model: str | None = None

    def row(self, dataset: str, setting: SettingKey) -> SummaryRow | None:
        for r in self.rows:
            if r.dataset == dataset and r.setting == setting:
                return r
        return None

    @property
    def has_paper(self) -> bool:
        return any(r.paper is not None for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"unit": "percent", "std": "population (ddof=0) over seeds", "model": self.model,
                "datasets": list(self.datasets), "settings": [s.label for s in self.settings],
                "rows": [r.to_dict() for r in self.rows]}


def summarize(cells: Sequence[CellResult], datasets: Sequence[str] | None = None, model: str | None = None,
              paper_names: Mapping[str, str | None] | None = None, suite: str | None = None) -> Summary:
    """Per dataset and setting mean ± std over seeds, and the unweighted average over `datasets` (all the
    suite's datasets: the average waits until each has a result; default: the datasets in `cells`).
    model / paper_names / suite: put the paper's numbers beside ours when `model` is an official preset
    (`paper_names`: dataset -> its name in the paper's tables; averages only for suite `odinw13` with all
    13 datasets)."""
    order = list(datasets) if datasets is not None else sorted({c.key.dataset for c in cells})
    by: dict[tuple[str, SettingKey], dict[int | None, CellResult]] = defaultdict(dict)
    for c in cells:
        by[c.key.dataset, c.key.setting][c.key.seed] = c
    settings = sorted({c.key.setting for c in cells})
    paper_names = paper_names or {}
    rows: list[SummaryRow] = []
    for setting in settings:
        for name in order:
            got = by.get((name, setting), {})
            seeds = tuple(sorted(got, key=lambda s: -1 if s is None else s))
            pv = paper.odinw_dataset_zero_shot(model, paper_names.get(name), setting.prompts) \
                if setting.shots == ZERO_SHOT else None
            rows.append(SummaryRow(name, setting, Stat.of([got[s].ap for s in seeds]) if seeds else None,
                                   Stat.of([got[s].ap50 for s in seeds]) if seeds else None, seeds, pv))
        rows.append(_average_row(order, setting, by, model, suite))
    return Summary(tuple(order), tuple(settings), tuple(rows), model)


def _average_row(order: Sequence[str], setting: SettingKey, by: Mapping, model: str | None,
                 suite: str | None) -> SummaryRow:
    results = [by.get((name, setting), {}) for name in order]
    done = sum(1 for r in results if r)
    seeds = set.intersection(*(set(r) for r in results)) if results and all(results) else set()
    seeds_sorted = tuple(sorted(seeds, key=lambda s: -1 if s is None else s))
    pv = None
    if suite == "odinw13" and len(order) == 13:
        pv = paper.odinw13_average(model, setting.shots, setting.mode, setting.prompts)
    if not seeds_sorted:
        why = f"{done}/{len(order)} datasets" if done < len(order) else "no seed run on every dataset"
        return SummaryRow(AVERAGE, setting, None, None, (), pv, why)
    ap = [sum(r[s].ap for r in results) / len(results) for s in seeds_sorted]
    ap50 = [sum(r[s].ap50 for r in results) / len(results) for s in seeds_sorted]
    return SummaryRow(AVERAGE, setting, Stat.of(ap), Stat.of(ap50), seeds_sorted, pv)


# -- files -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableFiles:
    json: Path
    csv: Path
    markdown: Path


CSV_COLUMNS = ("dataset", "setting", "shots", "mode", "prompts", "seeds", "ap_mean", "ap_std", "ap50_mean",
               "ap50_std", "paper_ap", "paper_std", "note")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def to_csv(summary: Summary) -> str:
    """One row per dataset (and average) and setting; numbers in percent."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in summary.rows:
        writer.writerow([r.dataset, r.setting.label, r.setting.shots, r.setting.mode, r.setting.prompts,
                         " ".join("-" if s is None else str(s) for s in r.seeds),
                         _num(r.ap.mean if r.ap else None), _num(r.ap.std if r.ap else None),
                         _num(r.ap50.mean if r.ap50 else None), _num(r.ap50.std if r.ap50 else None),
                         _num(r.paper.value if r.paper else None), _num(r.paper.std if r.paper else None),
                         r.partial or ""])
    return buf.getvalue()


def table_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """Header and body of the on-screen / Markdown table: a row per dataset and the average, per setting
    the columns AP and AP50 (mean ± std over seeds, percent), and the paper's AP when there is one."""
    header = ["dataset"]
    with_paper = {s for s in summary.settings if any(r.paper is not None for r in summary.rows if r.setting == s)}
    for s in summary.settings:
        header += [f"{s.label}: AP", f"{s.label}: AP50"] + ([f"{s.label}: paper AP"] if s in with_paper else [])
    body = []
    for name in (*summary.datasets, AVERAGE):
        line = [name]
        for s in summary.settings:
            r = summary.row(name, s)
            ap = r.ap.format() if r and r.ap else (f"({r.partial})" if r and r.partial else "-")
            line += [ap, r.ap50.format() if r and r.ap50 else "-"]
            if s in with_paper:
                line.append(r.paper.format() if r and r.paper else "")
        body.append(line)
    return header, body


def to_markdown(summary: Summary, title: str = "Benchmark results") -> str:
    header, body = table_rows(summary)
    esc = lambda t: t.replace("|", "\\|")  # noqa: E731
    lines = [f"# {title}", ""]
    if summary.model:
        lines += [f"Model: `{summary.model}`", ""]
    lines += ["AP and AP50 in percent (COCO AP@[.5:.95] and AP@.5), mean ± std (population) over seeds; "
              "Average: unweighted mean over the datasets.", ""]
    lines.append("| " + " | ".join(esc(h) for h in header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    sources = sorted({r.paper.source for r in summary.rows if r.paper is not None})
    if sources:
        lines += ["", "Paper numbers: " + "; ".join(sources) + "."]
    return "\n".join(lines) + "\n"


def rich_table(summary: Summary, title: str = "Benchmark results"):
    """The summary as a rich Table (for the terminal)."""
    from rich.table import Table

    header, body = table_rows(summary)
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(*row, style="bold" if row[0] == AVERAGE else None)
    return table


def write_tables(out_dir: str | Path, summary: Summary, cells: Sequence[CellResult],
                 run: Mapping[str, Any] | None = None) -> TableFiles:
    """results.json (run, cells, summary), results.csv and results.md under out_dir, each atomically."""
    out_dir = Path(out_dir)
    files = TableFiles(*(out_dir / name for name in TABLE_FILES))
    data = {"run": dict(run or {}), "cells": [c.to_dict() for c in cells], "summary": summary.to_dict()}
    _write_text(files.json, json_text(data, files.json, indent=2, default=str) + "\n")
    _write_text(files.csv, to_csv(summary))
    _write_text(files.markdown, to_markdown(summary))
    return files
