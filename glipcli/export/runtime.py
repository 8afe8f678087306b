"""Run an exported file with onnxruntime and give `glip detect`'s results.

    >>> detector = OnnxDetector.load("pothole.onnx")
    >>> results = detector.predict(["road.jpg"], box_threshold=0.3)

Images are read and preprocessed by the same code as the PyTorch predictor (the policy recorded
in the file), batched by size, and the detections finished as `glipcli.chunked_detection` finishes one
caption's: suppression phrases set aside, per-class thresholds, the suppression rule.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from glipcli.config import InputConfig
from glipcli.data.batching import ImageFailure, ImageInput, PreparedImage, iter_batches
from glipcli.data.transforms import batch_images
from glipcli.errors import GlipError
from glipcli.export.metadata import ExportMetadata
from glipcli.modeling.postprocess import Detections, limit_detections
from glipcli.predictor import ImageResult, detection_result
from glipcli.prompts.prompt_file import PromptSpec

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def is_onnx_model(model: str | None) -> bool:
    return model is not None and str(model).lower().endswith(".onnx")


class OnnxDetector:
    def __init__(self, session, metadata: ExportMetadata, source: str = "the ONNX file"):
        self.session = session
        self.meta = metadata
        self.source = source
        self.input_cfg = InputConfig(min_size=metadata.min_size, max_size=metadata.max_size,
                                     pixel_mean=tuple(metadata.pixel_mean), pixel_std=tuple(metadata.pixel_std),
                                     size_divisible=metadata.size_divisible)
        # The exported classes with their thresholds (labels and thresholds only: the caption,
        # suppression phrases included, is the metadata's).
        names = PromptSpec.from_names(metadata.classes)
        self.exported_spec = PromptSpec([replace(c, threshold=t) for c, t in zip(names.classes, metadata.class_thresholds)])

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None) -> "OnnxDetector":
        """device: cpu or cuda (onnxruntime's CUDA provider, from the onnxruntime-gpu package)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise GlipError("running an .onnx model needs onnxruntime: pip install 'glipcli[onnx]'") from None
        path = Path(path)
        if not path.is_file():
            raise GlipError(f"{path}: no such file")
        kind = "cuda" if str(device).startswith("cuda") else "cpu" if device in ("cpu", "auto") else None
        if kind is None:
            raise GlipError(f"an .onnx model runs on cpu or cuda, not {device!r}")
        if kind == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise GlipError("onnxruntime has no CUDA provider here (install onnxruntime-gpu) ; use --device cpu")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=PROVIDERS[kind])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise GlipError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        meta = ExportMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        return cls(session, meta, str(path))

    # -- prompts ---------------------------------------------------------------------------------
    def check_spec(self, spec: PromptSpec | None) -> PromptSpec:
        """The prompt to report with: the exported one, or `spec` if it asks for exactly the exported
        caption (its per-class thresholds then apply). Another prompt is refused."""
        if spec is None or spec is self.exported_spec:
            return self.exported_spec
        caption = spec.caption().caption
        if caption != self.meta.caption or spec.names != self.meta.classes:
            raise GlipError(f"{self.source} was exported for the classes {', '.join(self.meta.classes)} "
                            f"(caption {self.meta.caption!r}); re-export it for this prompt or give no prompt")
        return spec

    # -- inference -------------------------------------------------------------------------------
    def run(self, images: np.ndarray, image_sizes: np.ndarray, original_sizes: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The graph itself: boxes [M, 4] (original pixels), scores [M], phrases [M], batch_index [M]."""
        feeds = {"images": images.astype(np.float32, copy=False), "image_sizes": image_sizes.astype(np.int64),
                 "original_sizes": original_sizes.astype(np.int64)}
        return tuple(self.session.run(None, feeds))

    def finish(self, boxes: torch.Tensor, scores: torch.Tensor, phrases: torch.Tensor, spec: PromptSpec,
               box_threshold: float) -> Detections:
        """One image's graph outputs -> class detections (labels 1-based class indices)."""
        from torchvision.ops import box_iou

        lookup = torch.tensor(self.meta.phrase_class, dtype=torch.long)
        classes = lookup[phrases]
        is_class = classes >= 0
        claimed = Detections(boxes, scores, phrases).select(~is_class)
        kept = Detections(boxes, scores, classes + 1).select(is_class)
        limits = torch.tensor([box_threshold if c.threshold is None else c.threshold for c in spec.classes],
                              dtype=torch.float32)
        kept = kept.select(kept.scores >= limits[kept.labels - 1])
        if self.meta.suppress_iou is not None and len(claimed) and len(kept):
            overlaps = box_iou(kept.boxes, claimed.boxes) > self.meta.suppress_iou
            outscored = claimed.scores[None, :] > kept.scores[:, None]
            kept = kept.select(~(overlaps & outscored).any(dim=1))
        return limit_detections(kept, self.meta.max_detections)

    def iter_predict(self, images: ImageInput | Sequence[ImageInput], spec: PromptSpec | None = None,
                     box_threshold: float = 0.0, batch_size: int = 1, skip_errors: bool = False
                     ) -> Iterator[tuple[PreparedImage, ImageResult] | ImageFailure]:
        """As `GLIPPredictor.iter_predict` / `glipcli.chunked_detection.iter_detect_with_spec`."""
        spec = self.check_spec(spec)
        sources = [images] if isinstance(images, (str, Path)) else list(images)
        for item in iter_batches(sources, self.input_cfg, batch_size):
            if isinstance(item, ImageFailure):
                if not skip_errors:
                    raise GlipError(item.error)
                yield item
                continue
            batch, sizes = batch_images([p.tensor for p in item], self.input_cfg.size_divisible)
            originals = np.array([[p.image.height, p.image.width] for p in item], dtype=np.int64)
            boxes, scores, phrases, index = (torch.from_numpy(np.asarray(a)) for a in
                                             self.run(batch.numpy(), np.array(sizes, dtype=np.int64), originals))
            for b, prepared in enumerate(item):
                mine = index == b
                dets = self.finish(boxes[mine], scores[mine], phrases[mine], spec, box_threshold)
                yield prepared, detection_result(prepared, dets, spec.names, self.meta.caption)

    def predict(self, images: ImageInput | Sequence[ImageInput], spec: PromptSpec | None = None,
                box_threshold: float = 0.0, batch_size: int = 1) -> list[ImageResult]:
        done = [r for r in self.iter_predict(images, spec, box_threshold, batch_size) if not isinstance(r, ImageFailure)]
        return [result for _, result in sorted(done, key=lambda pair: pair[0].index)]
