"""Where a dataset's splits are: a Roboflow export folder and/or explicit annotation files and
image folders (`glip finetune --data DIR`, `--train-ann FILE`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glipcli.errors import GlipError

ROBOFLOW_ANNOTATION_FILE = "_annotations.coco.json"


@dataclass(frozen=True)
class SplitPaths:
    ann: Path
    images: Path


# -- locating the splits ---------------------------------------------------------------------------
def roboflow_splits(data_dir: str | Path) -> dict[str, SplitPaths]:
    """The splits of a Roboflow export `DIR/{train,valid,test}/_annotations.coco.json` (images
    beside each file). `val` and `validation` folders are accepted for `valid`."""
    root = Path(data_dir)
    if not root.is_dir():
        raise GlipError(f"{root}: no such dataset folder")
    found: dict[str, SplitPaths] = {}
    aliases = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}
    for split, names in aliases.items():
        for name in names:
            ann = root / name / ROBOFLOW_ANNOTATION_FILE
            if ann.is_file():
                found[split] = SplitPaths(ann, ann.parent)
                break
    if "train" not in found:
        raise GlipError(f"{root}: no train/{ROBOFLOW_ANNOTATION_FILE} (expected the Roboflow COCO layout "
                        f"DIR/{{train,valid,test}}/{ROBOFLOW_ANNOTATION_FILE})")
    return found


def resolve_splits(data_dir: str | Path | None = None, *, train_ann: str | Path | None = None,
                   train_images: str | Path | None = None, val_ann: str | Path | None = None,
                   val_images: str | Path | None = None, test_ann: str | Path | None = None,
                   test_images: str | Path | None = None) -> dict[str, SplitPaths]:
    """Splits from `--data DIR` (Roboflow layout) and/or explicit annotation/image paths.

    Explicit paths override the folder's; an explicit annotation file without an image folder
    takes the images from the annotation file's folder."""
    splits: dict[str, SplitPaths] = roboflow_splits(data_dir) if data_dir is not None else {}
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
        raise GlipError("no training data: pass --data DIR (Roboflow COCO layout) or --train-ann FILE")
    for paths in splits.values():
        if not paths.images.is_dir():
            raise GlipError(f"{paths.images}: no such image folder")
    return splits
