"""The Python API: load a GLIP model and detect / ground phrases in images.

    >>> from glipcli import GLIPPredictor
    >>> predictor = GLIPPredictor.from_pretrained("glip-t")          # official weights, from the hub
    >>> results = predictor.predict(["street.jpg"], "person. bicycle. car.", batch_size=4)
    >>> results[0].detections[0].label, results[0].detections[0].box_xyxy
    >>> (g,) = predictor.ground("cafe.jpg", "[a woman] holding [a cup of coffee]", top_k=1)
    >>> g.phrases[1].text, g.phrases[1].boxes[0].score

Images are loaded ahead by a few threads and batched by size (`glipcli.data.batching`). A
reduced `dtype` runs with the weights cast to it on the CPU and under autocast on GPUs;
post-processing runs in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from glipcli.config import GLIPConfig
from glipcli.data.batching import ImageFailure, ImageInput, PreparedImage, iter_batches
from glipcli.data.transforms import batch_images
from glipcli.device import autocast, resolve_device, resolve_dtype
from glipcli.errors import GlipError
from glipcli.grounding import GroundedPhrase, GroundingResult, PhraseSpec, grounding_phrases, top_boxes_per_phrase
from glipcli.modeling.cuda_graphs import GraphedGLIP
from glipcli.modeling.glip import GLIP, expand_for_prompts
from glipcli.modeling.language import TextFeatures
from glipcli.modeling.postprocess import ATSSPostProcessor, Detections, phrase_scores, rescale_boxes
from glipcli.prompts.caption import Phrase, detection_caption
from glipcli.prompts.chunking import count_tokens
from glipcli.prompts.encoding import EncodedPrompt, encode_prompt
from glipcli.weights import load_model, resolve_model_source

__all__ = ["GLIPPredictor", "Detection", "ImageResult", "ImageFailure", "PreparedImage", "ImageInput",
           "BatchDetector", "parse_class_prompt"]

# A function running the model on a padded batch [B, 3, H, W] with its unpadded (h, w) sizes and
# returning each image's detections in resized-image pixels (float32).
BatchDetector = Callable[[torch.Tensor, list[tuple[int, int]]], list[Detections]]


@dataclass
class Detection:
    box_xyxy: list[float]  # original-image pixels
    score: float
    label: str  # the phrase text
    phrase_index: int  # 0-based index of the phrase in the prompt


@dataclass
class ImageResult:
    image: str
    width: int
    height: int
    caption: str
    detections: list[Detection] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_class_prompt(prompt: str | Sequence[str]) -> list[str]:
    """`"person. bicycle. car."` or `["person", "bicycle"]` -> class names (order kept)."""
    parts = [prompt] if isinstance(prompt, str) else list(prompt)
    names = [name.strip() for part in parts for name in str(part).split(".")]
    names = [n for n in names if n]
    if not names:
        raise GlipError("empty prompt: give at least one class name, e.g. -p \"person. bicycle.\"")
    return names


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    return [images] if isinstance(images, (str, Path, Image.Image)) else list(images)


class GLIPPredictor:
    """Zero-shot detection (class names) and phrase grounding (caption + spans) with a GLIP model.

    device: `cpu`, `cuda[:N]`, `mps` or `auto`; dtype: `float32`, `float16` or `bfloat16`.
    cast_weights: run a reduced dtype with the model's weights cast to it once (in place: the
    predictor then owns the model) instead of under autocast (weights stay float32 and are cast
    at every call). None: cast on the CPU, where autocast's per-call casts cost more than they
    save and the weights' memory halves; autocast on GPUs. prompt_batch_size: prompts (chunks of
    a long class list) the head reads in one batch (`detect_tensor_prompts`); None: 8 prompt-images
    a call on a GPU, 2 on the CPU. cuda_graphs: replay the model's forward from CUDA graphs, one
    captured per batch shape, padded image size and caption length on first use (a CUDA device
    only; see `glipcli.modeling.cuda_graphs`; the model's deformable convolutions are switched to
    the capturable `grid_sample` formulation)."""

    def __init__(self, model: GLIP, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                 cast_weights: bool | None = None, prompt_batch_size: int | None = None,
                 cuda_graphs: bool = False):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if cast_weights is None:
            cast_weights = self.device.type == "cpu"
        self.cast_weights = bool(cast_weights) and self.dtype != torch.float32
        self.model = model.to(self.device).eval()
        if self.cast_weights:
            self.model.to(self.dtype)
        self.cfg = model.cfg
        self.postprocessor = ATSSPostProcessor(self.cfg.postprocess)
        self._text_cache: dict[tuple[tuple[int, ...], torch.dtype], TextFeatures] = {}
        if prompt_batch_size is not None and prompt_batch_size < 1:
            raise GlipError(f"prompt batch size must be at least 1 (got {prompt_batch_size})")
        self.prompt_batch_size = prompt_batch_size
        self.graphs: GraphedGLIP | None = None
        if cuda_graphs:
            if self.device.type != "cuda":
                raise GlipError(f"--cuda-graphs needs a CUDA device (the device is {self.device.type}); "
                                "use --device cuda or leave CUDA graphs off")
            self.graphs = GraphedGLIP(self.model, torch.float32 if self.cast_weights else self.dtype)

    @classmethod
    def from_pretrained(cls, model: str | GLIPConfig | None = None, weights: str | Path | None = None,
                        config: str | Path | None = None, device: str = "cpu", dtype: str = "float32",
                        cache_dir: str | Path | None = None, cuda_graphs: bool = False) -> "GLIPPredictor":
        """Load a model.

        model: a preset (`glip-t`, `glip-t-a`, `glip-t-b`, `glip-t-c`, `glip-l`), a checkpoint path
        or a GLIPConfig. weights: an official `.pth` or our `.safetensors` (default: the preset's
        official checkpoint, downloaded from the Hugging Face hub into its cache). config: an
        official YACS `.yaml` (overrides the preset's architecture). A checkpoint given alone
        brings its architecture (our safetensors metadata, or recognised from its shapes).
        A GLIPConfig without weights gives a randomly initialised model."""
        source = resolve_model_source(model=model, weights=weights, config=config, cache_dir=cache_dir)
        return cls(load_model(source), device=device, dtype=dtype, cuda_graphs=cuda_graphs)

    # -- prompts -------------------------------------------------------------------------------
    def encode_classes(self, class_names: str | Sequence[str]) -> EncodedPrompt:
        caption, phrases = detection_caption(parse_class_prompt(class_names))
        return self.encode_caption(caption, phrases)

    def encode_caption(self, caption: str, phrases: Sequence[Phrase]) -> EncodedPrompt:
        prompt = encode_prompt(caption, list(phrases), max_length=self.cfg.language.max_query_len)
        if prompt.truncated:
            raise GlipError(f"prompt is longer than the model's {prompt.max_length} tokens; "
                            "shorten it or split the class list")
        return prompt

    def encode_grounding(self, caption: str, phrases: Sequence[PhraseSpec] = (), markup: bool = True
                         ) -> EncodedPrompt:
        """A grounding caption and its phrases (see `glipcli.grounding.grounding_phrases`),
        checked to fit the model's token budget and each to cover at least one token."""
        text, found = grounding_phrases(caption, phrases, markup=markup)
        prompt = encode_prompt(text, found, max_length=self.cfg.language.max_query_len)
        if prompt.truncated:
            raise GlipError(f"the caption is longer than the model's {prompt.max_length} tokens ({count_tokens(text)} "
                            "tokens, [CLS] and [SEP] included); shorten it: a grounding caption is read whole, "
                            "it cannot be split into chunks")
        for phrase, tokens in zip(found, prompt.token_spans):
            if not tokens:
                raise GlipError(f"phrase {phrase.text!r} covers no token of the caption")
        return prompt

    def text_features(self, prompt: EncodedPrompt) -> TextFeatures:
        """Language-backbone features of a prompt, computed once per distinct prompt (and dtype)."""
        # Padding tokens never influence real ones (they are masked in every attention), so
        # only the real tokens are encoded: same results, far less work than 256 positions.
        n = prompt.num_tokens
        key = (tuple(prompt.input_ids[0, :n].tolist()), self.dtype)
        if key not in self._text_cache:
            with torch.inference_mode(), self._autocast():
                text = self.model.encode_text(
                    prompt.input_ids[:, :n].to(self.device), prompt.attention_mask[:, :n].to(self.device))
            # every position is a real token: the head need not read the mask back from the device
            self._text_cache[key] = replace(text, has_padding=False)
        return self._text_cache[key]

    # -- inference -----------------------------------------------------------------------------
    def _autocast(self):
        """Autocast for a reduced dtype, unless the weights themselves are in it."""
        return autocast(self.device, torch.float32 if self.cast_weights else self.dtype)

    @torch.inference_mode()
    def detect_tensor(self, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                      prompt: EncodedPrompt, cap: bool = True) -> list[Detections]:
        """images: [B, 3, H, W] preprocessed+padded; returns detections in resized-image pixels.

        cap: keep the official per-image maximum (cfg.postprocess.max_detections) over all
        phrases; False keeps every detection surviving per-phrase NMS (grounding uses this, so
        a phrase is never crowded out by another's many boxes). With a reduced dtype the model's
        outputs are cast to float32 before post-processing, so boxes and scores are always
        float32."""
        return self.detect_tensor_prompts(images, image_sizes, [prompt], cap=cap)[0]

    @torch.inference_mode()
    def detect_tensor_prompts(self, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                              prompts: Sequence[EncodedPrompt], cap: bool = True) -> list[list[Detections]]:
        """`detect_tensor` for several prompts over the same images (e.g. the chunks of a long
        class list): the image backbone, which does not depend on the text, runs once, and the
        head reads up to `prompt_batch_size` prompts at once (a batch of prompts x images, the
        image features shared, each caption padded to the longest; padding never reaches a real
        token, so each prompt gets its own detections). Returns, per prompt, the detections of
        each image."""
        images = images.to(self.device, self.dtype if self.cast_weights else None)
        batch = images.shape[0]
        group = self.prompt_batch_size or _default_prompt_batch(self.device, batch)
        if self.graphs is not None:
            features = self.graphs.backbone(images)
        else:
            with self._autocast():
                features = self.model.backbone(images)
        results = []
        for start in range(0, len(prompts), group):
            chosen = prompts[start:start + group]
            texts = [self.text_features(prompt) for prompt in chosen]
            # prompt-major: row p * batch + b is prompt p over image b
            text = texts[0] if len(chosen) == 1 else TextFeatures.stack([_repeat_text(t, batch) for t in texts])
            if self.graphs is not None:  # outputs in the graph's buffers, read before its next replay
                outputs = self.graphs.forward_head(features, text, len(chosen))
            else:
                with self._autocast():
                    outputs = self.model.forward_head(expand_for_prompts(features, len(chosen)), text)
            head = outputs.head
            anchors = [a.float() for a in outputs.anchors]
            for p, prompt in enumerate(chosen):
                rows = slice(p * batch, (p + 1) * batch)
                args = ([r[rows].float() for r in head.box_regression], [c[rows].float() for c in head.centerness],
                        [phrase_scores(logits[rows].float(), prompt.token_spans) for logits in head.token_logits],
                        anchors, image_sizes)
                if cap:
                    results.append(self.postprocessor(*args))
                else:
                    results.append([self.postprocessor.nms(dets) for dets in self.postprocessor.candidates(*args)])
        return results

    def iter_batched(self, images: ImageInput | Sequence[ImageInput], detect_batch: BatchDetector,
                     batch_size: int = 1, skip_errors: bool = False
                     ) -> Iterator[tuple[PreparedImage, Detections] | ImageFailure]:
        """Run `detect_batch` over the images, `batch_size` at a time (grouped by size).

        Yields (prepared image, its detections in ORIGINAL pixels, on the CPU) per image, in
        batch order (use `PreparedImage.index` for input order). An unreadable input raises
        GlipError, or with `skip_errors` is yielded as an ImageFailure and the rest go on."""
        for item in iter_batches(_as_list(images), self.cfg.input, batch_size):
            if isinstance(item, ImageFailure):
                if not skip_errors:
                    raise GlipError(item.error)
                yield item
                continue
            batch, sizes = batch_images([p.tensor for p in item], self.cfg.input.size_divisible)
            try:
                detections = detect_batch(batch, sizes)
            except torch.OutOfMemoryError:
                raise GlipError(f"out of memory on {self.device} for a batch of {batch.shape[0]} image(s) of "
                                f"{batch.shape[-1]}x{batch.shape[-2]} pixels; use a smaller --batch-size, "
                                "--dtype float16 or --device cpu") from None
            for prepared, size, dets in zip(item, sizes, detections, strict=True):
                original = (prepared.image.height, prepared.image.width)
                boxes = rescale_boxes(dets.boxes.float().cpu(), size, original)
                yield prepared, Detections(boxes, dets.scores.float().cpu(), dets.labels.cpu())

    def iter_predict(self, images: ImageInput | Sequence[ImageInput],
                     prompt: str | Sequence[str] | EncodedPrompt, box_threshold: float = 0.0,
                     batch_size: int = 1, skip_errors: bool = False
                     ) -> Iterator[tuple[PreparedImage, ImageResult] | ImageFailure]:
        """`predict`, one image at a time as batches complete (see `iter_batched`)."""
        encoded = prompt if isinstance(prompt, EncodedPrompt) else self.encode_classes(prompt)
        labels = [p.text for p in encoded.phrases]

        def detect_batch(batch: torch.Tensor, sizes: list[tuple[int, int]]) -> list[Detections]:
            return self.detect_tensor(batch, sizes, encoded)

        for item in self.iter_batched(images, detect_batch, batch_size, skip_errors):
            if isinstance(item, ImageFailure):
                yield item
                continue
            prepared, dets = item
            yield prepared, detection_result(prepared, dets, labels, encoded.caption, box_threshold)

    def predict(self, images: ImageInput | Sequence[ImageInput], prompt: str | Sequence[str] | EncodedPrompt,
                box_threshold: float = 0.0, batch_size: int = 1) -> list[ImageResult]:
        """Detect the phrases of `prompt` in each image.

        prompt: class names (`"person. bicycle."` or a list) or an `EncodedPrompt` (e.g. from
        `encode_caption`). Returns one `ImageResult` per image, in input order: boxes in original
        pixels, sorted by score, those under `box_threshold` dropped. With `batch_size > 1`
        images of similar size share a batch; the padding can move scores slightly."""
        return _in_input_order(self.iter_predict(images, prompt, box_threshold, batch_size))

    def iter_ground(self, images: ImageInput | Sequence[ImageInput], caption: str | EncodedPrompt,
                    phrases: Sequence[PhraseSpec] = (), top_k: int = 1, box_threshold: float = 0.0,
                    batch_size: int = 1, markup: bool = True, skip_errors: bool = False
                    ) -> Iterator[tuple[PreparedImage, GroundingResult] | ImageFailure]:
        """`ground`, one image at a time as batches complete (see `iter_batched`)."""
        if top_k < 1:
            raise GlipError(f"top-k must be at least 1 (got {top_k})")
        encoded = caption if isinstance(caption, EncodedPrompt) else self.encode_grounding(caption, phrases, markup)

        def detect_batch(batch: torch.Tensor, sizes: list[tuple[int, int]]) -> list[Detections]:
            return self.detect_tensor(batch, sizes, encoded, cap=False)

        for item in self.iter_batched(images, detect_batch, batch_size, skip_errors):
            if isinstance(item, ImageFailure):
                yield item
                continue
            prepared, dets = item
            per_phrase = top_boxes_per_phrase(dets.boxes, dets.scores, dets.labels, len(encoded.phrases),
                                              top_k, box_threshold)
            grounded = [GroundedPhrase(p.text, [p.start, p.end], boxes)
                        for p, boxes in zip(encoded.phrases, per_phrase)]
            yield prepared, GroundingResult(prepared.source, prepared.image.width, prepared.image.height,
                                            encoded.caption, grounded)

    def ground(self, images: ImageInput | Sequence[ImageInput], caption: str | EncodedPrompt,
               phrases: Sequence[PhraseSpec] = (), top_k: int = 1, box_threshold: float = 0.0,
               batch_size: int = 1, markup: bool = True) -> list[GroundingResult]:
        """Ground the phrases of `caption` in each image.

        caption: text, with optional `[bracket]` markup (removed; each bracketed part is a phrase,
        nesting allowed) unless `markup=False`. phrases: texts located in the caption, `(start,
        end)` character spans or `Phrase`s; none at all -> the whole caption is the phrase.
        Returns, per image in input order, each phrase with its `top_k` best boxes (original
        pixels, best first) scoring at least `box_threshold`, chosen after per-phrase NMS and
        without the per-image detection cap (a phrase is never crowded out by another)."""
        return _in_input_order(self.iter_ground(images, caption, phrases, top_k, box_threshold,
                                                batch_size, markup))


def _default_prompt_batch(device: torch.device, images: int) -> int:
    """Prompts per head call when the predictor is not told: a GPU runs a batch of prompts
    in about the time of one (the head at batch 1 leaves it idle), up to 8 prompt-images; on
    the CPU, where a batch costs its sum, two keep the working memory small."""
    budget = 8 if device.type == "cuda" else 2
    return max(1, budget // max(images, 1))


def _repeat_text(text: TextFeatures, times: int) -> TextFeatures:
    """A caption's features [1, L, D] for `times` rows (a view); unchanged if already that many."""
    if text.hidden.shape[0] == times:
        return text
    return TextFeatures(hidden=text.hidden.expand(times, -1, -1), embedded=text.embedded.expand(times, -1, -1),
                        mask=text.mask.expand(times, -1), aggregate=text.aggregate.expand(times, -1),
                        has_padding=text.has_padding)


def detection_result(prepared: PreparedImage, dets: Detections, labels: Sequence[str], caption: str,
                     box_threshold: float = 0.0) -> ImageResult:
    """An ImageResult from detections in original pixels; `labels[i]` names label i + 1."""
    order = torch.argsort(dets.scores, descending=True, stable=True)
    detections = []
    for i in order.tolist():
        score = float(dets.scores[i])
        if score < box_threshold:
            continue
        index = int(dets.labels[i]) - 1
        detections.append(Detection(box_xyxy=[float(v) for v in dets.boxes[i]], score=score,
                                    label=labels[index], phrase_index=index))
    return ImageResult(image=prepared.source, width=prepared.image.width, height=prepared.image.height,
                       caption=caption, detections=detections)


def _in_input_order(items: Iterator[tuple[PreparedImage, object] | ImageFailure]) -> list:
    collected = [item for item in items if not isinstance(item, ImageFailure)]
    return [result for _, result in sorted(collected, key=lambda pair: pair[0].index)]
