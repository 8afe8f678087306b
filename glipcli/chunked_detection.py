"""Detection with a prompt spec: chunked captions, per-class thresholds, suppression phrases.

    >>> from glipcli.chunked_detection import detect_with_spec
    >>> from glipcli.prompts.prompt_file import PromptSpec
    >>> spec = PromptSpec.from_classes_file("lvis_names.txt")          # 1203 classes
    >>> results = detect_with_spec(predictor, ["a.jpg", "b.jpg"], spec)  # 17 chunks

Images are loaded and batched by `GLIPPredictor.iter_batched`; per batch, every chunk runs
through `GLIPPredictor.detect_tensor` (each chunk's text is encoded once: the predictor caches
text features by tokens, so later batches reuse them). The chunks' detections are merged per
image by `merge_chunk_detections`:

1. labels become global class indices; suppression-phrase detections are set aside;
2. per-class score thresholds (`ClassPrompt.threshold`, else the run's `box_threshold`);
3. class-aware NMS across chunks (official `ml_nms`, IoU > `nms_threshold`);
4. a class detection overlapped (IoU > `suppress_iou`) by a higher-scoring detection of a
   suppression phrase is dropped: the look-alike claimed that object;
5. the per-image cap (`max_detections`, the official kthvalue rule).

A spec that fits one chunk, without thresholds or suppression phrases, gives exactly the
detections of `GLIPPredictor.predict` on the same class list.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torchvision.ops import box_iou

from glipcli.data.batching import ImageFailure, ImageInput, PreparedImage
from glipcli.errors import GlipError
from glipcli.modeling.postprocess import Detections, limit_detections, ml_nms
from glipcli.predictor import GLIPPredictor, ImageResult, detection_result
from glipcli.prompts.chunking import ChunkPlan, plan_chunks
from glipcli.prompts.prompt_file import PromptSpec

DEFAULT_SUPPRESS_IOU = 0.6


def merge_chunk_detections(per_chunk: Sequence[Detections], plan: ChunkPlan, *, box_threshold: float = 0.0,
                           nms_threshold: float = 0.6, max_detections: int = 100,
                           suppress_iou: float | None = DEFAULT_SUPPRESS_IOU) -> Detections:
    """Merge one image's detections from every chunk of `plan` (steps 1-5 of the module doc).

    per_chunk[c]: chunk c's Detections (boxes [K_c, 4], scores [K_c], labels [K_c] 1-based
    phrase index into chunk c's prompt). Returns Detections whose labels are 1-based global
    class indices (class i of the spec -> label i + 1), in chunk order, not sorted.
    suppress_iou None: suppression detections are only dropped, never used to drop others.
    """
    if len(per_chunk) != len(plan.chunks):
        raise ValueError(f"{len(per_chunk)} detection sets for {len(plan.chunks)} chunks")
    thresholds = [box_threshold if c.threshold is None else c.threshold for c in plan.spec.classes]
    kept: list[Detections] = []
    suppressors: list[Detections] = []
    for chunk, dets in zip(plan.chunks, per_chunk):
        # -1 marks suppression phrases; labels are 1-based phrase indices into the chunk.
        lookup = torch.tensor([-1 if (g := chunk.phrase_class(p)) is None else g
                               for p in range(1, len(chunk.prompt.phrases) + 1)],
                              dtype=torch.long, device=dets.labels.device)
        classes = lookup[dets.labels - 1]
        is_class = classes >= 0
        suppressors.append(dets.select(~is_class))
        mapped = Detections(dets.boxes, dets.scores, classes + 1).select(is_class)
        limits = torch.tensor(thresholds, dtype=mapped.scores.dtype, device=mapped.scores.device)
        kept.append(mapped.select(mapped.scores >= limits[mapped.labels - 1]))

    merged = Detections.cat(kept)
    merged = merged.select(ml_nms(merged.boxes, merged.scores, merged.labels, nms_threshold))
    claimed = Detections.cat(suppressors)
    if suppress_iou is not None and len(claimed) and len(merged):
        overlaps = box_iou(merged.boxes, claimed.boxes) > suppress_iou
        outscored = claimed.scores[None, :] > merged.scores[:, None]
        merged = merged.select(~(overlaps & outscored).any(dim=1))
    return limit_detections(merged, max_detections)


def _checked_plan(predictor: GLIPPredictor, spec: PromptSpec | ChunkPlan, chunk_size: int | None) -> ChunkPlan:
    budget = predictor.cfg.language.max_query_len
    if not isinstance(spec, ChunkPlan):
        return plan_chunks(spec, max_tokens=budget, chunk_size=chunk_size)
    if spec.max_tokens > budget:
        raise GlipError(f"the chunk plan allows {spec.max_tokens} tokens but the model reads {budget}")
    return spec


def iter_detect_with_spec(predictor: GLIPPredictor, images: ImageInput | Sequence[ImageInput],
                          spec: PromptSpec | ChunkPlan, *, box_threshold: float = 0.0,
                          chunk_size: int | None = None, batch_size: int = 1, skip_errors: bool = False,
                          suppress_iou: float | None = DEFAULT_SUPPRESS_IOU
                          ) -> Iterator[tuple[PreparedImage, ImageResult] | ImageFailure]:
    """`detect_with_spec`, one image at a time as batches complete (like
    `GLIPPredictor.iter_predict`: batch order, ImageFailure items with `skip_errors`)."""
    plan = _checked_plan(predictor, spec, chunk_size)
    post = predictor.cfg.postprocess

    def detect_batch(batch: torch.Tensor, sizes: list[tuple[int, int]]) -> list[Detections]:
        per_chunk = predictor.detect_tensor_prompts(batch, sizes, [chunk.prompt for chunk in plan.chunks])
        return [merge_chunk_detections([dets[b] for dets in per_chunk], plan, box_threshold=box_threshold,
                                       nms_threshold=post.nms_threshold, max_detections=post.max_detections,
                                       suppress_iou=suppress_iou)
                for b in range(len(sizes))]

    names = plan.spec.names
    for item in predictor.iter_batched(images, detect_batch, batch_size, skip_errors):
        if isinstance(item, ImageFailure):
            yield item
            continue
        prepared, dets = item
        # Thresholds were applied per class in the merge.
        yield prepared, detection_result(prepared, dets, names, plan.caption)


def detect_with_spec(predictor: GLIPPredictor, images: ImageInput | Sequence[ImageInput],
                     spec: PromptSpec | ChunkPlan, *, box_threshold: float = 0.0, chunk_size: int | None = None,
                     batch_size: int = 1, suppress_iou: float | None = DEFAULT_SUPPRESS_IOU) -> list[ImageResult]:
    """Detect the spec's classes in each image, chunking the prompt to the model's budget.

    spec: a PromptSpec (chunked here, `chunk_size` capping classes per chunk) or a ready
    ChunkPlan (reuse one across calls). Returns one ImageResult per image, in input order:
    boxes in original pixels, sorted by score; `label` is the class's display name,
    `phrase_index` its index in the spec; `caption` is the whole spec's caption (each chunk
    reads a part of it). batch_size as in `GLIPPredictor.predict`.
    """
    items = iter_detect_with_spec(predictor, images, spec, box_threshold=box_threshold, chunk_size=chunk_size,
                                  batch_size=batch_size, suppress_iou=suppress_iou)
    done = [item for item in items if not isinstance(item, ImageFailure)]
    return [result for _, result in sorted(done, key=lambda pair: pair[0].index)]
