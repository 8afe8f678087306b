"""The splits of a Roboflow export: `DIR/{train,valid,test}/_annotations.coco.json`, images beside
each file. `glipcli.data.dataset_source` resolves the other forms of `--data` on top of this."""

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

