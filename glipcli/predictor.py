"""The Python API: load a GLIP model and detect / ground phrases in images.

    >>> from glipcli import GLIPPredictor
    >>> predictor = GLIPPredictor.from_pretrained("glip-t", weights="glip_tiny_model_o365_goldg.pth")
    >>> results = predictor.predict(["street.jpg"], "person. bicycle. car.")
    >>> results[0].detections[0].label, results[0].detections[0].box_xyxy
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from glipcli.checkpoint import FORMAT_TAG, load_checkpoint, read_state_dict
from glipcli.config import GLIPConfig, get_preset
from glipcli.data.transforms import batch_images, load_image, preprocess_image
from glipcli.errors import GlipError
from glipcli.modeling.glip import GLIP
from glipcli.modeling.language import TextFeatures
from glipcli.modeling.postprocess import ATSSPostProcessor, Detections, phrase_scores, rescale_boxes
from glipcli.prompts.caption import Phrase, detection_caption
from glipcli.prompts.encoding import EncodedPrompt, encode_prompt

ImageInput = str | Path | Image.Image


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


def build_model(config: GLIPConfig | str) -> GLIP:
    cfg = get_preset(config) if isinstance(config, str) else config
    return GLIP(cfg)


def config_from_checkpoint_metadata(metadata: dict[str, str]) -> GLIPConfig | None:
    """The config stored in one of our safetensors files, if any."""
    if metadata.get("format") != FORMAT_TAG or "config" not in metadata:
        return None
    from glipcli.config import (AnchorConfig, FPNConfig, HeadConfig, InputConfig, LanguageConfig,
                                LossConfig, PostProcessConfig, SwinConfig)

    raw = json.loads(metadata["config"])
    parts = {"swin": SwinConfig, "fpn": FPNConfig, "language": LanguageConfig, "head": HeadConfig,
             "anchors": AnchorConfig, "postprocess": PostProcessConfig, "input": InputConfig,
             "loss": LossConfig}

    def build(cls, values):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    return GLIPConfig(name=raw["name"], **{k: build(cls, raw[k]) for k, cls in parts.items()})


class GLIPPredictor:
    """Zero-shot detection (class names) and phrase grounding (caption + spans) with a GLIP model."""

    def __init__(self, model: GLIP, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.postprocessor = ATSSPostProcessor(self.cfg.postprocess)
        self._text_cache: dict[tuple[int, ...], TextFeatures] = {}

    @classmethod
    def from_pretrained(cls, model: str | GLIPConfig | None = None, weights: str | Path | None = None,
                        config: str | Path | None = None, device: str = "cpu") -> "GLIPPredictor":
        """Build from a preset name (`glip-t`, ...) or an official YACS `config`, then load `weights`
        (an official `.pth` or our `.safetensors`). Our safetensors files carry their config, so
        `model` may be omitted for them."""
        cfg: GLIPConfig | None = None
        if config is not None:
            from glipcli.yacs_config import config_from_yacs

            cfg = config_from_yacs(config)
        elif isinstance(model, GLIPConfig):
            cfg = model
        elif model is not None:
            cfg = get_preset(model)
        elif weights is not None and str(weights).endswith(".safetensors"):
            _, metadata = read_state_dict(weights)
            cfg = config_from_checkpoint_metadata(metadata)
        if cfg is None:
            raise GlipError("no model given: pass a preset name (e.g. glip-t) or an official config file")
        glip = GLIP(cfg)
        if weights is not None:
            load_checkpoint(glip, weights)
        return cls(glip, device=device)

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

    def text_features(self, prompt: EncodedPrompt) -> TextFeatures:
        """Language-backbone features of a prompt, computed once per distinct prompt."""
        # Padding tokens never influence real ones (they are masked in every attention), so
        # only the real tokens are encoded: same results, far less work than 256 positions.
        n = prompt.num_tokens
        key = tuple(prompt.input_ids[0, :n].tolist())
        if key not in self._text_cache:
            with torch.inference_mode():
                self._text_cache[key] = self.model.encode_text(
                    prompt.input_ids[:, :n].to(self.device), prompt.attention_mask[:, :n].to(self.device))
        return self._text_cache[key]

    # -- inference -----------------------------------------------------------------------------
    @torch.inference_mode()
    def detect_tensor(self, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                      prompt: EncodedPrompt) -> list[Detections]:
        """images: [B, 3, H, W] preprocessed+padded; returns detections in resized-image pixels."""
        outputs = self.model(images.to(self.device), self.text_features(prompt))
        scores = [phrase_scores(logits, prompt.token_spans) for logits in outputs.head.token_logits]
        return self.postprocessor(outputs.head.box_regression, outputs.head.centerness, scores,
                                  outputs.anchors, image_sizes)

    def predict(self, images: ImageInput | Sequence[ImageInput], prompt: str | Sequence[str] | EncodedPrompt,
                box_threshold: float = 0.0, batch_size: int = 1) -> list[ImageResult]:
        """Detect the phrases of `prompt` in each image.

        prompt: class names (`"person. bicycle."` or a list) or an `EncodedPrompt` (e.g. from
        `encode_caption` for grounding). Returns one `ImageResult` per image, boxes in original
        pixels, sorted by score, those under `box_threshold` dropped."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        encoded = prompt if isinstance(prompt, EncodedPrompt) else self.encode_classes(prompt)
        results: list[ImageResult] = []
        for start in range(0, len(images), batch_size):
            chunk = list(images[start:start + batch_size])
            pils = [load_image(im) if not isinstance(im, Image.Image) else im for im in chunk]
            tensors, sizes = zip(*(preprocess_image(im, self.cfg.input) for im in pils))
            batch, sizes = batch_images(list(tensors), self.cfg.input.size_divisible)
            dets = self.detect_tensor(batch, sizes, encoded)
            for source, pil, size, det in zip(chunk, pils, sizes, dets):
                results.append(self._to_result(source, pil, size, det, encoded, box_threshold))
        return results

    @staticmethod
    def _to_result(source: ImageInput, pil: Image.Image, resized_hw: tuple[int, int], det: Detections,
                   prompt: EncodedPrompt, box_threshold: float) -> ImageResult:
        boxes = rescale_boxes(det.boxes, resized_hw, (pil.height, pil.width))
        order = torch.argsort(det.scores, descending=True, stable=True)
        detections = []
        for i in order.tolist():
            score = float(det.scores[i])
            if score < box_threshold:
                continue
            index = int(det.labels[i]) - 1
            detections.append(Detection(box_xyxy=[float(v) for v in boxes[i]], score=score,
                                        label=prompt.phrases[index].text, phrase_index=index))
        name = str(source) if not isinstance(source, Image.Image) else "<image>"
        return ImageResult(image=name, width=pil.width, height=pil.height, caption=prompt.caption,
                           detections=detections)
