"""Detections as COCO results (the pycocotools `loadRes` format), ids taken from a ground truth.

A COCO ground-truth file gives each image an id (matched here by file name) and each class a
category id (matched by name). The results list holds one entry per detection:
`{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}`.

Boxes are converted as the official GLIP evaluation does (maskrcnn_benchmark
`BoxList.convert("xywh")`): `w = x1 - x0 + 1`, `h = y1 - y0 + 1`, so AP computed from these files
matches the official numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from glipcli.errors import GlipError, excerpt
from glipcli.io import read_json

TO_REMOVE = 1.0  # the official xyxy -> xywh convention


def _normalise(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


@dataclass
class CocoIndex:
    """The ids of a COCO ground-truth file: file_name -> image id, category name -> id."""

    path: Path
    images: dict[str, int]  # file_name as written in the file (POSIX separators)
    categories: dict[str, int]  # category name as written in the file

    @classmethod
    def load(cls, path: str | Path) -> "CocoIndex":
        path = Path(path)
        if not path.is_file():
            raise GlipError(f"{path}: no such COCO ground-truth file")
        data = read_json(path, "COCO ground-truth file", max_bytes=None, max_depth=None)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("categories"), list):
            raise GlipError(f"{path}: not a COCO ground-truth file (needs 'images' and 'categories' lists)")
        try:
            images = {str(im["file_name"]).replace("\\", "/"): int(im["id"]) for im in data["images"]}
            categories = {str(c["name"]): int(c["id"]) for c in data["categories"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise GlipError(f"{path}: an image or category entry lacks a valid id/name ({exc})") from None
        return cls(path, images, categories)

    def category_id(self, name: str) -> int:
        """The id of category `name`: exact, else case/underscore/space-insensitive."""
        if name in self.categories:
            return self.categories[name]
        matches = [cid for cname, cid in self.categories.items() if _normalise(cname) == _normalise(name)]
        if len(matches) == 1:
            return matches[0]
        shown = ", ".join(list(self.categories)[:8]) + (", ..." if len(self.categories) > 8 else "")
        raise GlipError(f"class {excerpt(name)} is not a category of {self.path.name} ({shown})")

    def image_id(self, image: str | Path) -> int:
        """The id of an image path: the GT `file_name` that equals its path or a trailing part
        of it (`val2017/0001.jpg` matches `/data/coco/val2017/0001.jpg`), else its unique
        base-name match."""
        parts = PurePosixPath(str(image).replace("\\", "/")).parts
        for start in range(len(parts)):
            key = "/".join(parts[start:])
            if key in self.images:
                return self.images[key]
        name = parts[-1] if parts else str(image)
        matches = [iid for fname, iid in self.images.items() if PurePosixPath(fname).name == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise GlipError(f"{image}: {len(matches)} images of {self.path.name} are named {excerpt(name)}; "
                            "run from the folder the file names are relative to")
        raise GlipError(f"{image}: not among the images of {self.path.name} (matched by file_name)")

    def check(self, images: Sequence[str | Path], class_names: Sequence[str]) -> None:
        """Raise GlipError now (before any inference) for an image or class without an id."""
        for name in class_names:
            self.category_id(name)
        for image in images:
            self.image_id(image)


def coco_results(results: Sequence, index: CocoIndex) -> list[dict]:
    """pycocotools results for ImageResult-like objects (`image`, `detections` with `label`,
    `box_xyxy`, `score`)."""
    out: list[dict] = []
    for result in results:
        image_id = index.image_id(result.image)
        for det in result.detections:
            x0, y0, x1, y1 = det.box_xyxy
            out.append({"image_id": image_id, "category_id": index.category_id(det.label),
                        "bbox": [x0, y0, x1 - x0 + TO_REMOVE, y1 - y0 + TO_REMOVE], "score": det.score})
    return out
