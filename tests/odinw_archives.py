"""Tiny ODinW-style archives (the official `odinw_35/<Folder>.zip` layout) made from a Roboflow export
of the reference data (`../shared/data/real/<name>/{train,valid}/_annotations.coco.json`), for tests of
the ODinW download: each split keeps its first `images` images, with the annotation file renamed to
`annotations_without_background.json` as in the official data."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path


def odinw_zip(export: Path, folder: str, version: str = "", images: int = 2,
              splits: tuple[str, ...] = ("train", "valid", "test")) -> bytes:
    """The bytes of `<folder>.zip` holding `<folder>/<version><split>/annotations_without_background.json`
    and the images it names, for each split of `export` (`test` is made from `valid` when absent)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for split in splits:
            source = export / split if (export / split).is_dir() else export / "valid"
            coco = json.loads((source / "_annotations.coco.json").read_text())
            kept = coco["images"][:images]
            ids = {im["id"] for im in kept}
            coco = {**coco, "images": kept, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
            prefix = f"{folder}/{version}{split}/"
            zf.writestr(prefix + "annotations_without_background.json", json.dumps(coco))
            for im in kept:
                zf.write(source / im["file_name"], prefix + im["file_name"])
    return buf.getvalue()
