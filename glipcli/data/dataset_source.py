"""What `--data` names for training: a Roboflow export, an official ODinW dataset folder, or an
ODinW dataset by name under the data root.

- Roboflow export: `DIR/{train,valid,test}/_annotations.coco.json`, images beside each file.
- Official ODinW dataset folder, as the official download unpacks it (`odinw/<Name>/`) or one of
  its version folders (`Aquarium/Aquarium Combined.v2-raw-1024.coco`, `EgoHands/generic`): each
  split in `<split>/annotations_without_background.json` (`mini_val/` for the minival split).
  The folder is recognised from its files against the ODinW registry, whatever it is called.
- An ODinW dataset name (`EgoHands`, `Raccoon`, any name `glip bench odinw --datasets` takes; a
  name ODinW-13 knows means its dataset: `EgoHands` is `EgoHands_generic`), found under the data
  root (`--data-root` of `glip bench odinw`: `$GLIP_DATA_ROOT`, else `DATASET`) in the official
  layout or as a Roboflow export. Missing data raises `OdinwDataMissing`, which names the command
  that fetches it.

ODinW splits are chosen as the registry says: train = the train split, valid (early stopping and
the best model) = the dataset's evaluation split (`minival` for EgoHands and the other large
sets, as the official configs evaluate on), test = the test split where it is not the
evaluation split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from glipcli.data.odinw.download import download_command
from glipcli.data.odinw.layout import (ROBOFLOW_ANNOTATION_FILE, BenchDataset, MissingDataset, SplitFiles,
                                  default_data_root, locate_odinw)
from glipcli.data.odinw.registry import OdinwDataset, find_datasets, name_key, odinw_suite
from glipcli.data.splits import SplitPaths, roboflow_splits
from glipcli.errors import GlipError

OFFICIAL_ANNOTATION_FILE = "annotations_without_background.json"


@dataclass(frozen=True)
class DatasetSource:
    """A training dataset found on disk.

    name: what run folders are called after (the folder's name; the registry name for ODinW).
    layout: "roboflow" or "odinw". splits: `train`, `valid`, `test` (those present).
    odinw: the registry entry when the data is an ODinW dataset."""

    name: str
    layout: str
    root: Path
    splits: Mapping[str, SplitPaths]
    odinw: OdinwDataset | None = None
    notes: tuple[str, ...] = field(default=())


class OdinwDataMissing(GlipError):
    """`--data NAME` names an ODinW dataset that is not under the data root. `command` fetches it;
    `expected` is where its evaluation annotations were looked for."""

    def __init__(self, dataset: OdinwDataset, data_root: Path, expected: Path):
        self.dataset, self.data_root, self.expected = dataset, data_root, expected
        super().__init__(f"ODinW dataset {dataset.name} is not under {data_root} (looked for {expected}); "
                         f"fetch it with: {self.command} (or add --download)")

    @property
    def command(self) -> str:
        return download_command([self.dataset.name], self.data_root)


def resolve_dataset(data: str | Path, data_root: str | Path | None = None) -> DatasetSource:
    """The dataset `data` names (see the module docstring): an existing folder is read as a
    Roboflow export or an official ODinW folder; otherwise a plain name is looked up in the
    ODinW registry and found under `data_root` (default: `default_data_root()`)."""
    path = Path(data)
    if path.is_dir():
        return dataset_folder(path)
    text = str(data).rstrip("/\\")
    if path.exists():
        raise GlipError(f"{path}: not a folder (--data takes a dataset folder or an ODinW dataset name)")
    entry = odinw_entry(text) if text and "/" not in text and "\\" not in text else None
    if entry is None:
        raise GlipError(f"{data}: no such dataset folder (nor an ODinW dataset name)")
    return odinw_by_name(entry, default_data_root() if data_root is None else Path(data_root))


def odinw_entry(name: str) -> OdinwDataset | None:
    """The ODinW dataset called `name` (ODinW-13's meaning first), None if no dataset has the name.
    A name several ODinW-35 datasets share raises GlipError listing them."""
    for suite in ("odinw13", "odinw35"):
        datasets = odinw_suite(suite)
        key = name_key(name)
        if any(name_key(a) == key for d in datasets for a in d.aliases):
            return find_datasets(datasets, [name])[0]
    return None


def odinw_by_name(entry: OdinwDataset, data_root: Path) -> DatasetSource:
    """ODinW dataset `entry` under `data_root` (official layout or a Roboflow export of it);
    OdinwDataMissing when its train or evaluation split is not there."""
    found = locate_odinw(entry, data_root, need_train=True)
    if isinstance(found, MissingDataset):
        absent = next((p for p in found.expected if not p.exists()), found.expected[0])
        raise OdinwDataMissing(entry, data_root, absent)
    return _from_bench(found)


def _from_bench(found: BenchDataset) -> DatasetSource:
    splits = _training_splits(found.splits, found.eval_split)
    return DatasetSource(found.name, "odinw", found.root, splits, found.odinw, tuple(found.notes))


def _training_splits(splits: Mapping[str, SplitFiles], eval_split: str) -> dict[str, SplitPaths]:
    out = {"train": SplitPaths(splits["train"].ann_file, splits["train"].img_dir),
           "valid": SplitPaths(splits[eval_split].ann_file, splits[eval_split].img_dir)}
    if "test" in splits and eval_split != "test":
        out["test"] = SplitPaths(splits["test"].ann_file, splits["test"].img_dir)
    return out


def dataset_folder(path: Path) -> DatasetSource:
    """A dataset folder: a Roboflow export, else an official ODinW dataset (or version) folder."""
    if (path / "train" / ROBOFLOW_ANNOTATION_FILE).is_file():
        return DatasetSource(_folder_name(path), "roboflow", path, roboflow_splits(path))
    matches = _odinw_layouts(path)
    named = [m for m, telling in matches if telling]
    if len(named) > 1:  # EgoHands/ holds generic and specific: the name picks ODinW-13's
        key = name_key(_folder_name(path))
        named = [m for m in named if key in {name_key(m.odinw.paper_name or ""), name_key(m.odinw.name)}] or named
    if len(named) > 1:
        raise GlipError(f"{path}: holds several ODinW datasets ({', '.join(m.name for m in named)}); "
                        "pass one of their version folders")
    if named:
        return named[0]
    if matches:  # the official split layout, but nothing tells which dataset it is
        return _plain_official(path)
    raise GlipError(f"{path}: not a dataset folder: no train/{ROBOFLOW_ANNOTATION_FILE} (a Roboflow export) "
                    f"nor .../train/{OFFICIAL_ANNOTATION_FILE} (an official ODinW dataset)")


def _folder_name(path: Path) -> str:
    return path.resolve().name or str(path)


def _plain_official(path: Path) -> DatasetSource:
    """`path/{train,mini_val or valid,test}/annotations_without_background.json` (where an ODinW
    dataset has a mini_val split, the registry evaluates on it)."""
    splits = {}
    for split, folders in (("train", ("train",)), ("valid", ("mini_val", "valid")), ("test", ("test",))):
        for folder in folders:
            if (path / folder / OFFICIAL_ANNOTATION_FILE).is_file():
                splits[split] = SplitPaths(path / folder / OFFICIAL_ANNOTATION_FILE, path / folder)
                break
    return DatasetSource(_folder_name(path), "odinw", path, splits)


def _odinw_layouts(path: Path) -> list[tuple[DatasetSource, bool]]:
    """The registry datasets whose official files `path` holds, as the dataset folder
    (`odinw/<folder>`) or as its version folder (`odinw/<folder>/<version>`); each with whether
    something tells it is that dataset (its version folder, or the folder's name), not only the
    common `train/`, `valid/` layout."""
    found: dict[str, tuple[DatasetSource, bool]] = {}
    names = {name_key(_folder_name(path)), name_key(path.resolve().parent.name)}
    for entry in odinw_suite("odinw35"):
        prefix = f"odinw/{entry.folder}/"
        relative = {s: (p.ann_file[len(prefix):], p.img_dir[len(prefix):]) for s, p in entry.splits.items()
                    if p.ann_file.startswith(prefix) and p.img_dir.startswith(prefix)}
        if entry.eval_split not in relative or "train" not in relative:
            continue
        version = relative["train"][0].split("/")[0]
        nested = all(ann.split("/")[0] == version for ann, _ in relative.values()) and "/" in relative["train"][1]
        if nested and path.name == version:
            relative = {s: (ann.split("/", 1)[1], img.split("/", 1)[1] if "/" in img else "")
                        for s, (ann, img) in relative.items()}
        splits = {}
        for split, (ann, img) in relative.items():
            files = SplitFiles(path / ann, path / img)
            export = files.ann_file.parent / ROBOFLOW_ANNOTATION_FILE
            if files.exists():
                splits[split] = files
            elif export.is_file() and files.img_dir.is_dir():
                splits[split] = SplitFiles(export, files.img_dir)
        if "train" in splits and entry.eval_split in splits:
            telling = nested or bool(names & {name_key(a) for a in entry.aliases})
            source = DatasetSource(entry.name, "odinw", path, _training_splits(splits, entry.eval_split), entry)
            found.setdefault(entry.name, (source, telling))
    return list(found.values())


def resolve_splits(data_dir: str | Path | None = None, *, train_ann: str | Path | None = None,
                   train_images: str | Path | None = None, val_ann: str | Path | None = None,
                   val_images: str | Path | None = None, test_ann: str | Path | None = None,
                   test_images: str | Path | None = None) -> dict[str, SplitPaths]:
    """Splits from `--data` (a Roboflow export, an official ODinW folder or an ODinW dataset name:
    see `glipcli.data.dataset_source`) and/or explicit annotation/image paths.

    Explicit paths override the folder's; an explicit annotation file without an image folder
    takes the images from the annotation file's folder."""
    splits: dict[str, SplitPaths] = dict(resolve_dataset(data_dir).splits) if data_dir is not None else {}
    for split, ann, images, flag in (("train", train_ann, train_images, "--train"),
                                     ("valid", val_ann, val_images, "--val"),
                                     ("test", test_ann, test_images, "--test")):
        if ann is None and images is None:
            continue
        if ann is None:
            if split not in splits:
                raise GlipError(f"{flag}-images given without {flag}-ann")
            splits[split] = SplitPaths(splits[split].ann, Path(images))
            continue
        ann = Path(ann)
        if not ann.is_file():
            raise GlipError(f"{ann}: no such annotation file")
        splits[split] = SplitPaths(ann, Path(images) if images is not None else ann.parent)
    if "train" not in splits:
        raise GlipError("no training data: pass --data DIR (a Roboflow export or an ODinW dataset) or --train-ann FILE")
    for paths in splits.values():
        if not paths.images.is_dir():
            raise GlipError(f"{paths.images}: no such image folder")
    return splits
