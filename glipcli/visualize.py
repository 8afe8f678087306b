"""Rendering boxes, labels and scores onto images (PIL only), and saving them atomically.

Each class (phrase index) gets its own colour: hues spaced by the golden angle, so neighbouring
indices differ strongly, at a saturation and brightness that stay visible on photos. Labels are
written on a filled box of the class colour, in black or white, whichever contrasts more.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from glipcli.io import atomic_write

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895
_SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP",
                 ".tif": "TIFF", ".tiff": "TIFF"}


@dataclass
class DrawBox:
    """One box to draw: xyxy in the image's pixels, its text, and its class for the colour."""

    box_xyxy: Sequence[float]
    text: str
    class_index: int


def class_colour(index: int) -> tuple[int, int, int]:
    """A distinct RGB colour for class `index` (deterministic)."""
    hue = (0.08 + index * _GOLDEN_RATIO_CONJUGATE) % 1.0
    value = 0.95 if index % 2 == 0 else 0.8
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return int(r * 255), int(g * 255), int(b * 255)


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `background` (relative luminance)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render(image: Image.Image, boxes: Sequence[DrawBox]) -> Image.Image:
    """A copy of `image` (RGB) with each box outlined and labelled; line width and font size
    scale with the image so labels stay legible on large photos."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    short = min(canvas.size)
    width = max(2, round(short / 250))
    font = _font(max(12, round(short / 40)))
    # Draw low-priority (later) boxes first so the best ones end on top.
    for box in reversed(list(boxes)):
        colour = class_colour(box.class_index)
        x0, y0, x1, y1 = (float(v) for v in box.box_xyxy)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), box.text, font=font)
        text_w, text_h = right - left, bottom - top
        pad = max(2, width)
        label_y = y0 - text_h - 2 * pad
        if label_y < 0:  # no room above the box: put the label inside its top edge
            label_y = y0
        label_x = min(max(0.0, x0), max(0.0, canvas.width - text_w - 2 * pad))
        draw.rectangle((label_x, label_y, label_x + text_w + 2 * pad, label_y + text_h + 2 * pad), fill=colour)
        draw.text((label_x + pad - left, label_y + pad - top), box.text, fill=text_colour(colour), font=font)
    return canvas


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write `image` to `path` atomically, in the format its suffix names (JPEG quality 95)."""
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower(), "PNG")
    options = {"quality": 95} if fmt == "JPEG" else {}
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **options))
    return path


def output_name(source: str, taken: set[str]) -> str:
    """The file name a rendering of `source` is saved under: its own name (PNG when the suffix
    is not a writable image format), with `-2`, `-3`, ... added when two inputs share a name."""
    src = Path(source)
    stem = src.stem if source != "<image>" else "image"
    suffix = src.suffix.lower() if src.suffix.lower() in _SAVE_FORMATS else ".png"
    name, n = stem + suffix, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}{suffix}"
    taken.add(name)
    return name
