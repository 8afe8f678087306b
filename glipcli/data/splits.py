"""The splits of a Roboflow export: `DIR/{train,valid,test}/_annotations.coco.json`, images beside
each file. `glipcli.data.dataset_source` resolves the other forms of `--data` on top of this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glipcli.errors import GlipError

ROBOFLOW_ANNOTATION_FILE = "_annotations.coco.json"
# Each split's folder names in an export, in order of preference.
SPLIT_FOLDERS = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}


@dataclass(frozen=True)
class SplitPaths:
    ann: Path
    images: Path


# -- locating the splits ---------------------------------------------------------------------------
def roboflow_annotation_files(folder: Path, split_folders: dict[str, tuple[str, ...]]) -> dict[str, Path]:
    """split -> `folder/<first existing of its folder names>/_annotations.coco.json`, for the
    splits present. split_folders: each split's accepted folder names, in order of preference."""
    found: dict[str, Path] = {}
    for split, names in split_folders.items():
        for name in names:
            ann = folder / name / ROBOFLOW_ANNOTATION_FILE
            if ann.is_file():
                found[split] = ann
                break
    return found


def roboflow_splits(data_dir: str | Path) -> dict[str, SplitPaths]:
    """The splits of a Roboflow export `DIR/{train,valid,test}/_annotations.coco.json` (images
    beside each file). `val` and `validation` folders are accepted for `valid`."""
    root = Path(data_dir)
    if not root.is_dir():
        raise GlipError(f"{root}: no such dataset folder")
    found = {split: SplitPaths(ann, ann.parent) for split, ann in roboflow_annotation_files(root, SPLIT_FOLDERS).items()}
    if "train" not in found:
        raise GlipError(f"{root}: no train/{ROBOFLOW_ANNOTATION_FILE} (expected the Roboflow COCO layout "
                        f"DIR/{{train,valid,test}}/{ROBOFLOW_ANNOTATION_FILE})")
    return found
