"""Writing the dataset in the Roboflow COCO layout that `glip finetune --data` reads:

    OUT/train/_annotations.coco.json   OUT/train/<images>
    OUT/valid/_annotations.coco.json   OUT/valid/<images>

Boxes are `[x, y, w, h]` with `w = x1 - x0 + 1` (the official GLIP conversion, which the COCO
reader inverts), image ids 1..N per split in input order, category ids 1..N in prompt order.
"""

from __future__ import annotations

from pathlib import Path

from glipcli.data.splits import ROBOFLOW_ANNOTATION_FILE
from glipcli.io import write_json
from glipcli.labeling.ontology import Ontology
from glipcli.labeling.placement import place_image, unique_names
from glipcli.labeling.records import ImageLabels


def coco_split(images: list[ImageLabels], file_names: list[str], ontology: Ontology) -> dict:
    """One split's COCO annotation file as a dict."""
    coco_images, annotations = [], []
    for image_id, (labels, name) in enumerate(zip(images, file_names), start=1):
        coco_images.append({"id": image_id, "file_name": name, "width": labels.width, "height": labels.height})
        for box in labels.boxes:
            x0, y0 = box.box_xyxy[:2]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": box.class_index + 1,
                                "bbox": [x0, y0, box.width, box.height], "area": box.width * box.height,
                                "iscrowd": 0, "score": box.score})
    return {"info": {"description": "labelled by glip label"}, "images": coco_images,
            "annotations": annotations, "categories": ontology.coco_categories()}


def write_coco(output: Path, splits: dict[str, list[ImageLabels]], ontology: Ontology, mode: str) -> list[str]:
    """Write every split (images first, the annotation file last); returns the top-level names
    written under `output`."""
    for split, images in splits.items():
        names = unique_names([labels.image for labels in images])
        for labels, name in zip(images, names):
            place_image(labels.image, output / split / name, mode)
        write_json(output / split / ROBOFLOW_ANNOTATION_FILE, coco_split(images, names, ontology), overwrite=True)
    return list(splits)
