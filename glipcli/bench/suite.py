"""Benchmark suites: `odinw13`, `odinw35`, or a user's suite file (`--suite FILE.yaml`).

A suite file lists COCO datasets, so that users benchmark their own domains the way ODinW is run::

    name: my-domains                  # optional; default: the file's name without .yaml
    datasets:
      - name: raccoon                 # required, unique: the dataset's name in the result tables
        root: data/raccoon            # a Roboflow export: {train,valid,test}/_annotations.coco.json
        prompt_file: raccoon.yaml     # optional: a glip prompt file (default: the category names)
        eval_split: val               # optional: val (default), test or minival
      - name: pothole
        train: {ann_file: pothole/train.json, img_dir: pothole/images}
        val: {ann_file: pothole/val.json}   # img_dir defaults to the annotation file's folder

Splits are `train`, `val` (`valid` is accepted), `minival` and `test`; an explicit split replaces the
one found under `root`. Relative paths are relative to the suite file's folder. The file may also be
the bare list of datasets. Every schema problem is a one-line GlipError naming the file, the entry
and the key.

ODinW suites find their data under `--data-root` (see `glipcli.data.odinw.layout`) and detect with the
dataset's prompt file `<prompts_dir>/{plain,manual}/<official config>.yaml`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


from glipcli.data.odinw.layout import (ROBOFLOW_ANNOTATION_FILE, ROBOFLOW_SPLIT_FOLDERS, Availability, BenchDataset,
                                  MissingDataset, SplitFiles, availability, locate_files, locate_odinw,
                                  roboflow_export_splits)
from glipcli.data.odinw.registry import PROMPT_VARIANTS, SUITES, OdinwDataset, find_datasets, name_key, odinw_suite
from glipcli.errors import GlipError, excerpt
from glipcli.io import read_yaml

SPLIT_NAMES = ("train", "val", "minival", "test")
SPLIT_ALIASES = {"valid": "val", "validation": "val", "mini_val": "minival"}
ENTRY_KEYS = ("name", "root", "prompt_file", "eval_split", *SPLIT_NAMES, *SPLIT_ALIASES)
SPLIT_KEYS = ("ann_file", "img_dir")
TOP_KEYS = ("name", "datasets")


def default_prompts_dir() -> Path:
    """The ODinW prompt files of the source checkout: `<repo>/prompts/odinw`."""
    return Path(__file__).resolve().parents[2] / "prompts" / "odinw"


@dataclass(frozen=True)
class SuiteEntry:
    """One dataset of a suite file (paths resolved, existence not yet checked)."""

    name: str
    root: Path | None
    splits: Mapping[str, SplitFiles]
    eval_split: str = "val"
    prompt_file: Path | None = None


@dataclass(frozen=True)
class Suite:
    """A named list of datasets: ODinW registry entries or suite-file entries."""

    name: str
    datasets: tuple[OdinwDataset | SuiteEntry, ...]
    source: Path | None = None

    @property
    def is_odinw(self) -> bool:
        return self.name in SUITES and self.source is None

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.datasets]

    def select(self, names: Sequence[str] | None) -> "Suite":
        """The suite restricted to `names` (`--datasets a,b`), in the order given; None: all."""
        if not names:
            return self
        if self.is_odinw:
            chosen = find_datasets(self.datasets, names)  # type: ignore[arg-type]
            return replace(self, datasets=tuple(chosen))
        chosen: list[SuiteEntry] = []
        for name in names:
            matches = [d for d in self.datasets if name_key(d.name) == name_key(name)]
            if not matches:
                raise GlipError(f"unknown dataset {excerpt(name)} in suite {self.name}; "
                                f"choose from: {', '.join(self.names)}")
            if matches[0] not in chosen:
                chosen.append(matches[0])  # type: ignore[arg-type]
        return replace(self, datasets=tuple(chosen))

    def locate(self, data_root: str | Path | None = None, prompts: str = "manual",
               prompts_dir: str | Path | None = None, need_train: bool = False) -> Availability:
        """Find every dataset on disk: found ones ready to run, missing ones named with where they
        were expected. ODinW suites need `data_root` and use the `prompts` variant's prompt files
        (a missing prompt file is a GlipError: it is part of the package checkout, not of the data)."""
        located: list[BenchDataset | MissingDataset] = []
        if self.is_odinw:
            if data_root is None:
                raise GlipError(f"suite {self.name} needs --data-root (the folder that holds odinw/)")
            if prompts not in PROMPT_VARIANTS:
                raise GlipError(f"--prompts must be {' or '.join(PROMPT_VARIANTS)} for ODinW (got {excerpt(prompts)})")
            pdir = Path(prompts_dir) if prompts_dir is not None else default_prompts_dir()
            for entry in self.datasets:
                assert isinstance(entry, OdinwDataset)
                prompt_file = entry.prompt_file(pdir, prompts)
                if not prompt_file.is_file():
                    raise GlipError(f"{prompt_file}: no {prompts} prompt file for ODinW dataset {entry.name} "
                                    "(pass --prompts-dir, the folder holding plain/ and manual/)")
                located.append(locate_odinw(entry, data_root, prompt_file, prompts, need_train))
        else:
            for entry in self.datasets:
                assert isinstance(entry, SuiteEntry)
                label = "file" if entry.prompt_file is not None else "names"
                if entry.prompt_file is not None and not entry.prompt_file.is_file():
                    raise GlipError(f"{entry.prompt_file}: no such prompt file (dataset {entry.name} of {self.name})")
                splits = dict(roboflow_export_splits(entry.root)) if entry.root is not None else {}
                splits.update(entry.splits)
                layout = "roboflow" if entry.root is not None and not entry.splits else "files"
                found = locate_files(entry.name, splits, entry.eval_split, entry.prompt_file, label,
                                     need_train, layout, entry.root)
                if isinstance(found, MissingDataset) and entry.root is not None and not found.expected:
                    expected = tuple(entry.root / ROBOFLOW_SPLIT_FOLDERS[s][0] / ROBOFLOW_ANNOTATION_FILE
                                     for s in ([entry.eval_split] + (["train"] if need_train else []))
                                     if s not in splits)
                    reason = found.reason if splits else "no Roboflow export found"
                    found = MissingDataset(entry.name, expected, reason)
                located.append(found)
        return availability(located)


# -- loading ---------------------------------------------------------------------------------------
def load_suite(spec: str | Path) -> Suite:
    """`odinw13`, `odinw35` or the path of a suite file."""
    text = str(spec)
    if text.lower().replace("-", "").replace("_", "") in SUITES and not Path(text).is_file():
        name = text.lower().replace("-", "").replace("_", "")
        return Suite(name, odinw_suite(name))
    path = Path(text).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml") and not path.is_file():
        raise GlipError(f"--suite must be odinw13, odinw35 or a suite file (.yaml); got {excerpt(text)}")
    return load_suite_file(path)


def load_suite_file(path: str | Path) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise GlipError(f"{path}: no such suite file")
    data = read_yaml(path, "suite file")
    return parse_suite(data, path)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _path(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise GlipError(f"{where}: must be a path (a non-empty string), got {_type_name(value)}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _check_keys(data: Mapping, allowed: Sequence[str], where: str) -> None:
    unknown = [str(k) for k in data if k not in allowed]
    if unknown:
        raise GlipError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(excerpt, unknown[:5]))} "
                        f"(allowed: {', '.join(allowed)})")


def _split(value: Any, base: Path, where: str) -> SplitFiles:
    if isinstance(value, str):
        ann = _path(value, base, where)
        return SplitFiles(ann, ann.parent)
    if not isinstance(value, Mapping):
        raise GlipError(f"{where}: must be a mapping with ann_file (and img_dir), got {_type_name(value)}")
    _check_keys(value, SPLIT_KEYS, where)
    if "ann_file" not in value:
        raise GlipError(f"{where}: missing ann_file")
    ann = _path(value["ann_file"], base, f"{where}.ann_file")
    img = _path(value["img_dir"], base, f"{where}.img_dir") if value.get("img_dir") is not None else ann.parent
    return SplitFiles(ann, img)


def _entry(raw: Any, base: Path, where: str) -> SuiteEntry:
    if not isinstance(raw, Mapping):
        raise GlipError(f"{where}: must be a mapping (name, root or split files), got {_type_name(raw)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise GlipError(f"{where}: needs a name (a non-empty string)")
    where = f"{where} ({name})"
    _check_keys(raw, ENTRY_KEYS, where)
    splits: dict[str, SplitFiles] = {}
    for key in raw:
        split = SPLIT_ALIASES.get(key, key)
        if split in SPLIT_NAMES:
            if split in splits:
                raise GlipError(f"{where}: split {split} given twice ({excerpt(key)} is {split})")
            splits[split] = _split(raw[key], base, f"{where}.{key}")
    root = _path(raw["root"], base, f"{where}.root") if raw.get("root") is not None else None
    if root is None and not splits:
        raise GlipError(f"{where}: needs root (a Roboflow export folder) or split files (train/val/test)")
    eval_split = raw.get("eval_split", "val")
    eval_split = SPLIT_ALIASES.get(eval_split, eval_split) if isinstance(eval_split, str) else eval_split
    if eval_split not in ("val", "minival", "test"):
        raise GlipError(f"{where}.eval_split: must be val, minival or test, got {excerpt(eval_split)}")
    if root is None and eval_split not in splits:
        raise GlipError(f"{where}: eval_split is {eval_split} but no {eval_split} split files are given")
    prompt = _path(raw["prompt_file"], base, f"{where}.prompt_file") if raw.get("prompt_file") is not None else None
    return SuiteEntry(name.strip(), root, splits, eval_split, prompt)


def parse_suite(data: Any, path: Path) -> Suite:
    """A suite from its parsed YAML (`path`: the file, for messages and relative paths)."""
    where = str(path)
    name = path.stem
    if isinstance(data, Mapping):
        _check_keys(data, TOP_KEYS, where)
        if data.get("name") is not None:
            if not isinstance(data["name"], str) or not data["name"].strip():
                raise GlipError(f"{where}: name must be a non-empty string")
            name = data["name"].strip()
        datasets = data.get("datasets")
    else:
        datasets = data
    if not isinstance(datasets, list) or not datasets:
        raise GlipError(f"{where}: needs a non-empty list of datasets (under 'datasets:')")
    base = path.parent
    entries = [_entry(raw, base, f"{where}: datasets[{i}]") for i, raw in enumerate(datasets)]
    seen: dict[str, str] = {}
    for e in entries:
        key = name_key(e.name)
        if key in seen:
            raise GlipError(f"{where}: dataset name {excerpt(e.name)} is used twice (names must be unique; "
                            f"compared ignoring case, '_', '-', '.')")
        seen[key] = e.name
    return Suite(name, tuple(entries), path)
