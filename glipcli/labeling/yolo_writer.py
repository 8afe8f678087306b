"""Writing the dataset in the YOLO layout (ultralytics and darknet-style tools):

    OUT/data.yaml                       names, and where each split's images are
    OUT/images/<split>/<image>          OUT/labels/<split>/<image stem>.txt

A label line is `class cx cy w h`: class id 0..N-1 in prompt order, the box centre and size as
fractions of the image's width and height (a box `x0..x1` covers `x1 - x0 + 1` pixels). An image
without boxes gets an empty label file: a negative. Tools find the labels by replacing `images`
with `labels` in an image's path. `data.yaml` names its folders relative to itself.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from glipcli.io import atomic_write
from glipcli.labeling.ontology import Ontology
from glipcli.labeling.placement import place_image, unique_names
from glipcli.labeling.records import ImageLabels

YOLO_SPLIT_KEYS = {"train": "train", "valid": "val", "test": "test"}


def yolo_lines(labels: ImageLabels) -> str:
    """The label file of one image."""
    lines = []
    for box in labels.boxes:
        x0, y0, x1, y1 = box.box_xyxy
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(labels.width - 1.0, x1), min(labels.height - 1.0, y1)
        w, h = x1 - x0 + 1.0, y1 - y0 + 1.0
        cx, cy = (x0 + w / 2) / labels.width, (y0 + h / 2) / labels.height
        lines.append(f"{box.class_index} {cx:.6f} {cy:.6f} {w / labels.width:.6f} {h / labels.height:.6f}\n")
    return "".join(lines)


def data_yaml(splits: list[str], ontology: Ontology) -> str:
    data: dict = {}
    for split in splits:
        data[YOLO_SPLIT_KEYS[split]] = f"images/{split}"
    if "val" not in data:  # YOLO trainers require a validation set; without one they validate on train
        data["val"] = data["train"]
    data["nc"] = len(ontology.names)
    data["names"] = {i: name for i, name in enumerate(ontology.names)}
    header = "# YOLO dataset written by glip label; paths are relative to this file's folder.\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def write_yolo(output: Path, splits: dict[str, list[ImageLabels]], ontology: Ontology, mode: str) -> list[str]:
    """Write every split and data.yaml (last); returns the top-level names written."""
    for split, images in splits.items():
        names = unique_names([labels.image for labels in images])
        for labels, name in zip(images, names):
            place_image(labels.image, output / "images" / split / name, mode)
            text = yolo_lines(labels)
            atomic_write(output / "labels" / split / (Path(name).stem + ".txt"), lambda tmp: tmp.write_text(text))
    text = data_yaml(list(splits), ontology)
    atomic_write(output / "data.yaml", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return ["images", "labels", "data.yaml"]
