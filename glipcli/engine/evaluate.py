"""COCO box AP of a model on a cleaned split (pycocotools), the official way.

Images go through the official test-time preprocessing and post-processing (those of
`glip detect`), detections are mapped back to original pixels and written as COCO results with
`w = x2 - x1 + 1` (maskrcnn_benchmark `BoxList.convert("xywh")`), and scored against the split's
cleaned ground truth (`glipcli.data.coco.coco_ground_truth`). Detections of suppression phrases
are not results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from glipcli.data.coco import CocoDetectionData, coco_ground_truth
from glipcli.data.training_prompt import TrainingPrompt
from glipcli.data.transforms import batch_images, load_image, preprocess_image
from glipcli.evaluation.coco import coco_box_ap
from glipcli.evaluation.metrics import DetectionMetrics
from glipcli.modeling.glip import GLIP
from glipcli.modeling.language import TextFeatures
from glipcli.modeling.postprocess import ATSSPostProcessor, phrase_scores, rescale_boxes


@torch.no_grad()
def predict_split(model: GLIP, data: CocoDetectionData, prompt: TrainingPrompt, batch_size: int = 4,
                  device: torch.device | str = "cpu", indices: Sequence[int] | None = None,
                  progress: Callable[[int], None] | None = None,
                  text_transform: Callable[[TextFeatures], TextFeatures] | None = None) -> list[dict]:
    """COCO-format detections (image_id = record index, category_id = class + 1) for the images
    `indices` of `data` (all by default). The model is put in eval mode and left in it.
    text_transform: applied to the encoded text (e.g. a tuned prompt offset)."""
    device = torch.device(device)
    model.eval()
    cfg = model.cfg
    postprocess = ATSSPostProcessor(cfg.postprocess)
    encoded = prompt.encoded
    n = encoded.num_tokens
    text = model.encode_text(encoded.input_ids[:, :n].to(device), encoded.attention_mask[:, :n].to(device))
    if text_transform is not None:
        text = text_transform(text)
    spans = encoded.token_spans
    num_class_phrases = len(prompt.phrase_labels)
    records = [data.images[i] for i in (range(len(data.images)) if indices is None else indices)]
    results: list[dict] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        pils = [load_image(r.path) for r in chunk]
        tensors, sizes = zip(*(preprocess_image(im, cfg.input) for im in pils))
        images, sizes = batch_images(list(tensors), cfg.input.size_divisible)
        outputs = model(images.to(device), text)
        scores = [phrase_scores(logits.float(), spans) for logits in outputs.head.token_logits]
        dets = postprocess([r.float() for r in outputs.head.box_regression],
                           [c.float() for c in outputs.head.centerness], scores, outputs.anchors, sizes)
        for record, pil, size, det in zip(chunk, pils, sizes, dets):
            boxes = rescale_boxes(det.boxes, size, (pil.height, pil.width)).cpu()
            for box, score, label in zip(boxes.tolist(), det.scores.cpu().tolist(), det.labels.cpu().tolist()):
                phrase = int(label) - 1
                if phrase >= num_class_phrases:
                    continue  # a suppression phrase
                x1, y1, x2, y2 = box
                results.append({"image_id": record.index, "category_id": prompt.phrase_labels[phrase] + 1,
                                "bbox": [x1, y1, x2 - x1 + 1.0, y2 - y1 + 1.0], "score": float(score)})
        if progress is not None:
            progress(len(chunk))
    return results


def coco_evaluate(data: CocoDetectionData, results: list[dict], indices: Sequence[int] | None = None
                  ) -> DetectionMetrics:
    """pycocotools box evaluation of `results` on the images `indices` (all by default)."""
    image_ids = list(range(len(data.images))) if indices is None else [int(i) for i in indices]
    scored = coco_box_ap(coco_ground_truth(data), results, image_ids=image_ids)
    per_class = {name: scored.per_category.get(k + 1, -1.0) for k, name in enumerate(data.classes)}
    return DetectionMetrics(dict(scored.metrics), per_class, len(image_ids), len(results))


def evaluate(model: GLIP, data: CocoDetectionData, prompt: TrainingPrompt, batch_size: int = 4,
             device: torch.device | str = "cpu", indices: Sequence[int] | None = None,
             progress: Callable[[int], None] | None = None,
             text_transform: Callable[[TextFeatures], TextFeatures] | None = None) -> DetectionMetrics:
    """Predict on the split and score the detections."""
    results = predict_split(model, data, prompt, batch_size, device, indices, progress, text_transform)
    return coco_evaluate(data, results, indices)
