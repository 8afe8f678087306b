"""Helpers for the training tests: tiny synthetic COCO datasets and a tiny random GLIP config."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

from glipcli.config import GLIPConfig
from glipcli.yacs_config import config_from_yacs

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 30)}


def tiny_config(golden_dir: Path, min_size: int = 128, max_size: int = 160, head_layers: int = 1,
                fusion_dim: int | None = None) -> GLIPConfig:
    """The golden reduced GLIP-T, smaller still: small images, fewer head layers."""
    cfg = config_from_yacs(golden_dir / "tiny" / "config.yaml")
    head = dataclasses.replace(cfg.head, num_layers=head_layers)
    if fusion_dim is not None:
        head = dataclasses.replace(head, fusion_embed_dim=fusion_dim)
    return dataclasses.replace(cfg, name="tiny-train", head=head,
                               input=dataclasses.replace(cfg.input, min_size=min_size, max_size=max_size))


def draw_image(path: Path, size: tuple[int, int], boxes: list[tuple[str, tuple[float, float, float, float]]],
               mode: str = "RGB", background: tuple[int, int, int] = (128, 128, 128),
               exif_orientation: int | None = None) -> None:
    """An image of `size` (w, h) with filled rectangles [x, y, w, h] of the named colours."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for color, (x, y, w, h) in boxes:
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLORS[color])
    if mode != "RGB":
        image = image.convert(mode)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    image.save(path, **kwargs)


def write_split(folder: Path, images: list[dict], classes: list[str], *, placeholder: str | None = None,
                first_image_id: int = 1, first_category_id: int = 1, extra_annotations: list[dict] | None = None
                ) -> Path:
    """Write `folder/_annotations.coco.json` + the images.

    images: [{"name", "size": (w, h), "boxes": [(class, [x, y, w, h])], "mode"?, "exif"?,
    "draw_boxes"?: boxes to draw instead}]; the annotation boxes are `boxes`."""
    folder.mkdir(parents=True, exist_ok=True)
    categories = []
    if placeholder is not None:
        categories.append({"id": 0, "name": placeholder, "supercategory": "none"})
    cat_ids = {name: first_category_id + i for i, name in enumerate(classes)}
    for name in classes:
        categories.append({"id": cat_ids[name], "name": name, "supercategory": placeholder or "shapes"})
    coco_images, annotations = [], []
    for i, spec in enumerate(images):
        image_id = first_image_id + i
        w, h = spec["size"]
        draw_image(folder / spec["name"], (w, h), [(c, b) for c, b in spec.get("draw_boxes", spec["boxes"])],
                   mode=spec.get("mode", "RGB"), exif_orientation=spec.get("exif"))
        json_size = spec.get("json_size", (w, h))
        coco_images.append({"id": image_id, "file_name": spec["name"], "width": json_size[0], "height": json_size[1]})
        for cls, box in spec["boxes"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[cls],
                                "bbox": list(box), "area": float(box[2] * box[3]), "iscrowd": 0})
    annotations.extend(extra_annotations or [])
    ann = folder / "_annotations.coco.json"
    ann.write_text(json.dumps({"images": coco_images, "annotations": annotations, "categories": categories}))
    return ann


def shapes_dataset(root: Path, classes=("red", "blue"), train_images: int = 2, val: bool = True,
                   test: bool = False, size: tuple[int, int] = (160, 128)) -> Path:
    """A Roboflow-layout dataset of coloured rectangles: every image shows each class once."""
    def split(n: int, offset: int) -> list[dict]:
        out = []
        for i in range(n):
            k = i + offset
            boxes = []
            cell = size[0] // len(classes)
            for j, cls in enumerate(classes):
                w, h = min(cell - 12, 56), 48 + (j % 2) * 8
                x = j * cell + 4 + (k * 7) % max(1, cell - w - 8)
                y = 6 + (k * 13) % max(1, size[1] - h - 12)
                boxes.append((cls, [x, y, w, h]))
            out.append({"name": f"img{k}.png", "size": size, "boxes": boxes})
        return out

    write_split(root / "train", split(train_images, 0), list(classes))
    if val:
        write_split(root / "valid", split(train_images, 0), list(classes))
    if test:
        write_split(root / "test", split(train_images, 0), list(classes))
    return root


def tiny_model_args(golden_dir: Path, folder: Path) -> list[str]:
    """`--config FILE --weights FILE` of the golden reduced GLIP-T at small image sizes, as a user
    passes a model on the command line (the config written into `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    tree = yaml.safe_load((golden_dir / "tiny/config.yaml").read_text())
    tree["INPUT"].update(MIN_SIZE_TEST=128, MAX_SIZE_TEST=160, MIN_SIZE_TRAIN=[128], MAX_SIZE_TRAIN=160)
    (folder / "config.yaml").write_text(yaml.safe_dump(tree))
    shutil.copy(golden_dir / "tiny/bert_config.json", folder / "bert_config.json")
    return ["--config", str(folder / "config.yaml"), "--weights", str(golden_dir / "tiny/weights.safetensors")]
