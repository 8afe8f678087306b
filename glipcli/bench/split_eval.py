"""Detect a split's classes with a predictor and score them (pycocotools COCO AP): the model side of
`glip bench`.

    spec = dataset_prompt_spec(ground_truth, prompt_file)           # the prompt file, else category names
    metrics, info = evaluate_split(predictor, SplitFiles(ann, img_dir), spec)

Detections come from `glipcli.chunked_detection.iter_detect_with_spec` (long class lists are chunked)
with no score threshold beyond the model's own (`postprocess.score_threshold`), at most
`postprocess.max_detections` per image; classes, categories, images and the box convention are those
of `glipcli.evaluation.detection`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from glipcli.data.odinw.layout import SplitFiles
from glipcli.chunked_detection import iter_detect_with_spec
from glipcli.evaluation.coco import coco_box_ap, load_ground_truth
from glipcli.evaluation.detection import image_paths, map_classes, require_evaluable, to_result
from glipcli.evaluation.metrics import DetectionMetrics
from glipcli.prompts.prompt_file import PromptSpec

# A progress callback: (images done, images in all).
Progress = Callable[[int, int], None]


def detect_images(predictor, paths: Sequence[Path], spec: PromptSpec, *, batch_size: int = 1,
                  chunk_size: int | None = None) -> Iterator[tuple[int, list]]:
    """(input index, [Detection, ...]) per image as batches complete (labels index the spec's classes)."""
    for prepared, result in iter_detect_with_spec(predictor, list(paths), spec, box_threshold=0.0,
                                                  chunk_size=chunk_size, batch_size=batch_size):
        yield prepared.index, result.detections


def detection_results(predictor, paths: Sequence[Path], image_ids: Sequence[Any], spec: PromptSpec,
                      category_ids: Sequence[int], *, plus_one: bool = True, batch_size: int = 1,
                      chunk_size: int | None = None, progress: Progress | None = None,
                      on_image: Callable[[Any, list[dict]], None] | None = None) -> list[dict]:
    """pycocotools results of the spec's classes on the images (`image_ids[i]` is `paths[i]`'s id).
    on_image(image id, its results) is called as each image completes (e.g. to log it)."""
    results: list[dict] = []
    done = 0
    for index, detections in detect_images(predictor, paths, spec, batch_size=batch_size, chunk_size=chunk_size):
        image_id = image_ids[index]
        mine = [to_result(image_id, category_ids[d.phrase_index], d.box_xyxy, d.score, plus_one) for d in detections]
        results.extend(mine)
        if on_image is not None:
            on_image(image_id, mine)
        done += 1
        if progress is not None:
            progress(done, len(paths))
    return results


def evaluate_split(predictor, split: SplitFiles, spec: PromptSpec, *, batch_size: int = 1,
                   progress: Progress | None = None) -> tuple[DetectionMetrics, dict[str, Any]]:
    """Detect `spec`'s classes on every image of a COCO split and score them (pycocotools COCO AP).
    Returns the metrics and facts for the result cell (images, detections, seconds, notes)."""
    start = time.perf_counter()
    where = str(split.ann_file)
    ground_truth = load_ground_truth(split.ann_file)
    require_evaluable(ground_truth, where)
    mapping = map_classes(spec, ground_truth, where)
    images = ground_truth["images"]
    paths = image_paths(images, split.img_dir, where)
    ids = [im["id"] for im in images]
    results = detection_results(predictor, paths, ids, spec, mapping.category_ids, plus_one=True,
                                batch_size=batch_size, progress=progress)
    metrics = coco_box_ap(ground_truth, results)
    info = {"ann_file": str(split.ann_file), "images": len(ids), "detections": len(results),
            "seconds": round(time.perf_counter() - start, 2), "category_ids": mapping.category_ids,
            "notes": mapping.notes}
    return metrics, info
