"""`glip label`: unlabelled images in, a training-ready dataset (COCO or YOLO) out.

One concept per module: `records` (an image's labels), `journal` (per-process JSONL, resuming),
`ontology` (class names -> categories), `filters` (min size, class-agnostic NMS, cap), `splits`,
`placement` (copying or linking images), `coco_writer`, `yolo_writer`, `summary`, `preview`,
`output` (the dataset folder's states) and `labeler` (the run). Sharding over processes is
`glipcli.sharding`, shared with `glip detect`.
"""

from glipcli.labeling.filters import LabelFilters
from glipcli.labeling.labeler import (FORMATS, LabelConfig, LabelOutcome, label_images, label_settings,
                                      write_dataset)
from glipcli.labeling.records import ImageLabels, LabelBox
from glipcli.labeling.splits import parse_splits

__all__ = ["FORMATS", "ImageLabels", "LabelBox", "LabelConfig", "LabelFilters", "LabelOutcome", "label_images",
           "label_settings", "parse_splits", "write_dataset"]
