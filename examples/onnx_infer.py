"""Run a file made by `glip export` with onnxruntime, numpy and Pillow only (no torch, no glipcli).

    python examples/onnx_infer.py pothole.onnx road.jpg [--threshold 0.3]

Prints one line per detection: label, score, box (x0, y0, x1, y1) in the image's pixels.
The preprocessing below is the documented one (docs/export.md); the file's metadata gives its
sizes and normalisation.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def resized_size(width: int, height: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """(w, h) after the test-time resize: short side -> min_size, long side at most max_size."""
    size = min_size
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return width, height
    if width < height:
        return size, max(1, int(size * height / width))
    return max(1, int(size * width / height)), size


def preprocess(image: Image.Image, meta: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB image -> [1, 3, Hp, Wp] float32 (BGR 0..255 normalised, zero-padded) and the resized (h, w)."""
    new_w, new_h = resized_size(image.width, image.height, meta["min_size"], meta["max_size"])
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BILINEAR)
    rgb = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
    bgr = (rgb / np.float32(255))[::-1] * np.float32(255)
    mean = np.asarray(meta["pixel_mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(meta["pixel_std"], dtype=np.float32).reshape(3, 1, 1)
    normalised = (bgr - mean) / std
    step = meta["size_divisible"]
    padded_h, padded_w = -(-new_h // step) * step, -(-new_w // step) * step
    batch = np.zeros((1, 3, padded_h, padded_w), dtype=np.float32)
    batch[0, :, :new_h, :new_w] = normalised
    return batch, (new_h, new_w)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with boxes [K, 4]."""
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    area = (box[2:] - box[:2]).prod()
    return inter / (area + (others[:, 2:] - others[:, :2]).prod(axis=1) - inter)


def detect(session: ort.InferenceSession, meta: dict, image: Image.Image, threshold: float) -> list[tuple]:
    batch, resized = preprocess(image, meta)
    boxes, scores, phrases, _ = session.run(None, {
        "images": batch, "image_sizes": np.array([resized], dtype=np.int64),
        "original_sizes": np.array([[image.height, image.width]], dtype=np.int64)})
    classes = np.asarray(meta["phrase_class"])[phrases]
    limits = np.array([threshold if t is None else t for t in meta["class_thresholds"]], dtype=np.float32)
    suppressors = classes < 0  # suppression phrases: never reported
    found = []
    for i in np.argsort(-scores, kind="stable"):
        if suppressors[i] or scores[i] < limits[classes[i]]:
            continue
        if meta["suppress_iou"] is not None and suppressors.any():
            claimed = (iou(boxes[i], boxes[suppressors]) > meta["suppress_iou"]) & (scores[suppressors] > scores[i])
            if claimed.any():
                continue
        found.append((meta["classes"][classes[i]], float(scores[i]), [float(v) for v in boxes[i]]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .onnx file written by `glip export`")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--threshold", type=float, default=0.3, help="score threshold (default 0.3)")
    args = parser.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["glip"])
    for path in args.images:
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        detections = detect(session, meta, image, args.threshold)
        print(f"{path}: {len(detections)} detections")
        for label, score, box in detections:
            print(f"  {label}\t{score:.4f}\t" + " ".join(f"{v:.2f}" for v in box))


if __name__ == "__main__":
    main()
