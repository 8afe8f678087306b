"""Where a benchmark dataset's files are on disk: the official ODinW layout, a plain Roboflow export,
or explicit paths; and which datasets are missing (named, with where they were expected).

Layouts looked for, for an ODinW dataset under the data root DATA (`--data-root`):

1. official: `DATA/odinw/<folder>/.../<split>/annotations_without_background.json` (the registry's
   paths; DATA may also be the `odinw` folder itself), with the prepared few-shot files
   `fewshot_train_shot{K}_seed{S}.json` used where present. A split folder that holds only
   Roboflow's `_annotations.coco.json` (the downloaded export before clean-up) is used too.
2. Roboflow export: a folder of DATA (or DATA/odinw) named after the dataset (any alias, compared
   case-insensitively without `_ - .` and spaces: `raccoon/`, `chess_pieces/`) holding
   `{train,valid,test}/_annotations.coco.json` (directly or in the registry's version sub-folder).
   The val split is `valid/`; an evaluation split `minival` is `mini_val/` when the export has
   one, else `valid/`, with a note that the numbers are then not comparable with the paper's.

A dataset is found when its evaluation split (annotation file and image folder) exists, and its
train split too when training is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from glipcli.data.odinw.registry import OdinwDataset, name_key
from glipcli.data.splits import ROBOFLOW_ANNOTATION_FILE, roboflow_annotation_files
from glipcli.errors import GlipError

ROBOFLOW_SPLIT_FOLDERS = {
    "train": ("train",),
    "val": ("valid", "val", "validation"),
    "minival": ("mini_val", "minival"),
    "test": ("test",),
}
DATA_ROOT_ENV = "GLIP_DATA_ROOT"


def default_data_root() -> Path:
    """`$GLIP_DATA_ROOT`, else `DATASET` (the official code's data root), relative to the working folder."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "DATASET")


@dataclass(frozen=True)
class SplitFiles:
    """A COCO annotation file and the folder its `file_name`s are relative to."""

    ann_file: Path
    img_dir: Path

    def exists(self) -> bool:
        return self.ann_file.is_file() and self.img_dir.is_dir()


@dataclass(frozen=True)
class BenchDataset:
    """A dataset found on disk, ready to benchmark.

    layout: "official", "roboflow" or "files" (explicit paths of a suite file).
    splits: by split name (`train`, `val`, `minival`, `test`; only those found).
    prompt_file: the prompt YAML to detect with (None: the annotation file's category names).
    prompts: the prompt label of result cells (`plain`, `manual`, `file`, `names`).
    fewshot_files: (shots, seed) -> prepared few-shot train annotation file (official layout only).
    notes: things a user should know (e.g. evaluation on `valid` instead of the official `minival`).
    """

    name: str
    layout: str
    root: Path
    splits: Mapping[str, SplitFiles]
    eval_split: str
    prompt_file: Path | None = None
    prompts: str = "names"
    odinw: OdinwDataset | None = None
    fewshot_files: Mapping[tuple[int, int], Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def eval(self) -> SplitFiles:
        return self.splits[self.eval_split]

    @property
    def train(self) -> SplitFiles | None:
        return self.splits.get("train")

    def fewshot_file(self, shots: int, seed: int) -> Path | None:
        """The prepared few-shot train file for (shots, seed), or None (draw the subset with the seed)."""
        return self.fewshot_files.get((shots, seed))


@dataclass(frozen=True)
class MissingDataset:
    """A dataset that was not found: what was looked for, and where."""

    name: str
    expected: tuple[Path, ...]
    reason: str = "not found"

    def message(self) -> str:
        where = " or ".join(str(p) for p in self.expected) if self.expected else "nowhere"
        return f"{self.name}: {self.reason} (expected {where})"


@dataclass
class Availability:
    """Which datasets of a suite were found and which are missing."""

    found: list[BenchDataset] = field(default_factory=list)
    missing: list[MissingDataset] = field(default_factory=list)

    def report(self) -> list[str]:
        """One line per missing dataset."""
        return [m.message() for m in self.missing]

    def require(self, skip_missing: bool = False) -> list[BenchDataset]:
        """The datasets found; a GlipError naming every missing one unless `skip_missing`."""
        if self.missing and not skip_missing:
            n = len(self.missing)
            raise GlipError(f"{n} dataset{'s' if n != 1 else ''} missing: " + "; ".join(self.report())
                            + " (pass --skip-missing to run the others)")
        if not self.found:
            raise GlipError("no dataset of the suite was found: " + "; ".join(self.report()))
        return list(self.found)


# -- the official layout -------------------------------------------------------------------------
def _official_base(data_root: Path) -> Path:
    """The folder the registry's `odinw/...` paths are relative to."""
    if not (data_root / "odinw").is_dir() and data_root.name == "odinw":
        return data_root.parent
    return data_root


def _official_split(base: Path, ann_file: str, img_dir: str) -> SplitFiles | None:
    files = SplitFiles(base / ann_file, base / img_dir)
    if files.exists():
        return files
    export = (base / ann_file).parent / ROBOFLOW_ANNOTATION_FILE
    if export.is_file() and files.img_dir.is_dir():
        return SplitFiles(export, files.img_dir)
    return None


def _locate_official(entry: OdinwDataset, data_root: Path) -> tuple[dict[str, SplitFiles], dict]:
    base = _official_base(data_root)
    splits = {}
    for split, paths in entry.splits.items():
        found = _official_split(base, paths.ann_file, paths.img_dir)
        if found is not None:
            splits[split] = found
    fewshot = {(f.shots, f.seed): base / f.path for f in entry.fewshot
               if f.split == "train" and (base / f.path).is_file()}
    return splits, fewshot


# -- Roboflow exports ------------------------------------------------------------------------------
def roboflow_export_splits(folder: Path) -> dict[str, SplitFiles]:
    """The splits of a Roboflow export `folder/{train,valid,test}/_annotations.coco.json` (by registry
    split name: `valid` -> `val`; `mini_val` -> `minival`)."""
    return {split: SplitFiles(ann, ann.parent)
            for split, ann in roboflow_annotation_files(folder, ROBOFLOW_SPLIT_FOLDERS).items()}


def _roboflow_candidates(entry: OdinwDataset, data_root: Path) -> list[Path]:
    keys = {name_key(a) for a in entry.aliases}
    parts = entry.splits[entry.eval_split].ann_file.split("/")
    version = parts[2] if len(parts) > 4 else None  # odinw/<folder>/<version>/<split>/<file>
    out: list[Path] = []
    for parent in (data_root, data_root / "odinw"):
        if not parent.is_dir():
            continue
        for child in sorted(parent.iterdir()):
            if child.is_dir() and name_key(child.name) in keys:
                out.append(child)
                if version and (child / version).is_dir():
                    out.append(child / version)
    return out


def _eval_split_for(entry: OdinwDataset, splits: Mapping[str, SplitFiles]) -> tuple[str | None, tuple[str, ...]]:
    if entry.eval_split in splits:
        return entry.eval_split, ()
    if entry.eval_split == "minival" and "val" in splits:
        return "val", (f"the official evaluation split minival is not in this export; evaluating on valid "
                       "(not comparable with the paper's numbers)",)
    return None, ()


def locate_odinw(entry: OdinwDataset, data_root: str | Path, prompt_file: Path | None = None,
                 prompts: str = "names", need_train: bool = False) -> BenchDataset | MissingDataset:
    """Find one ODinW dataset under `data_root` (official layout first, then a Roboflow export)."""
    data_root = Path(data_root)
    splits, fewshot = _locate_official(entry, data_root)
    eval_ok = entry.eval_split in splits and (not need_train or "train" in splits)
    if eval_ok:
        return BenchDataset(entry.name, "official", _official_base(data_root), splits, entry.eval_split,
                            prompt_file, prompts, entry, fewshot)
    for folder in _roboflow_candidates(entry, data_root):
        export = roboflow_export_splits(folder)
        eval_split, notes = _eval_split_for(entry, export)
        if eval_split is None or (need_train and "train" not in export):
            continue
        return BenchDataset(entry.name, "roboflow", folder, export, eval_split, prompt_file, prompts, entry,
                            {}, notes)
    base = _official_base(data_root)
    expected = [base / entry.splits[entry.eval_split].ann_file]
    if need_train:
        expected.append(base / entry.splits["train"].ann_file)
    expected_rf = data_root / entry.name / ROBOFLOW_SPLIT_FOLDERS["val"][0] / ROBOFLOW_ANNOTATION_FILE
    reason = "not found" if not splits else f"incomplete (found only {', '.join(sorted(splits))})"
    return MissingDataset(entry.name, (*expected, expected_rf), reason)


def locate_files(name: str, splits: Mapping[str, SplitFiles], eval_split: str, prompt_file: Path | None = None,
                 prompts: str = "names", need_train: bool = False, layout: str = "files",
                 root: Path | None = None) -> BenchDataset | MissingDataset:
    """A dataset given by explicit split files (a suite file's entry): found when its evaluation split
    (and train split if `need_train`) exists."""
    needed = [eval_split] + (["train"] if need_train else [])
    absent = [s for s in needed if s not in splits or not splits[s].exists()]
    if absent:
        expected = []
        for s in absent:
            if s in splits:
                expected += [p for p in (splits[s].ann_file, splits[s].img_dir) if not p.exists()]
        reason = "split" + ("s " if len(absent) > 1 else " ") + ", ".join(absent) + " not found"
        return MissingDataset(name, tuple(expected), reason)
    present = {k: v for k, v in splits.items() if v.exists()}
    return BenchDataset(name, layout, root or present[eval_split].ann_file.parent, present, eval_split,
                        prompt_file, prompts)


def availability(results: Sequence[BenchDataset | MissingDataset]) -> Availability:
    out = Availability()
    for r in results:
        (out.found if isinstance(r, BenchDataset) else out.missing).append(r)
    return out
