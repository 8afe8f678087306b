"""`--save-vis N`: N of the written images rendered with their labels, for a quick look."""

from __future__ import annotations

from pathlib import Path

from glipcli.data.transforms import load_image
from glipcli.labeling.records import ImageLabels
from glipcli.visualize import DrawBox, output_name, render, save_image

PREVIEW_DIR = "preview"


def sample_positions(total: int, count: int) -> list[int]:
    """`count` positions spread evenly over `total` (all of them when count >= total)."""
    if count >= total:
        return list(range(total))
    return sorted({(i * total) // count for i in range(count)})


def render_preview(splits: dict[str, list[ImageLabels]], class_names: list[str], folder: Path,
                   count: int) -> list[Path]:
    """Render a spread sample of the dataset's images (split by split) into `folder`."""
    images = [(split, labels) for split, members in splits.items() for labels in members]
    taken: set[str] = set()
    written = []
    for position in sample_positions(len(images), count):
        split, labels = images[position]
        boxes = [DrawBox(b.box_xyxy, f"{class_names[b.class_index]} {b.score:.2f}", b.class_index)
                 for b in labels.boxes]
        name = output_name(f"{split}-{Path(labels.image).name}", taken)
        written.append(save_image(render(load_image(labels.image), boxes), folder / name))
    return written
