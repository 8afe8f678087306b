"""The exportable detector: a GLIP model with one prompt's text features baked in as constants.

    images [B, 3, H, W] float32  (preprocessed: resized, BGR-255 normalised, zero-padded to /32)
    image_sizes [B, 2] int64     (h, w) of each resized image before padding
    original_sizes [B, 2] int64  (h, w) of each input image
  ->
    boxes [M, 4] float32   xyxy in input-image pixels
    scores [M] float32
    phrases [M] int64      0-based phrase index of the baked caption
    batch_index [M] int64  which image of the batch

The text encoder runs once, at construction; the graph holds the Swin+FPN backbone, the fusion
head and the post-processing (`GraphPostProcessor`). Only the model's public pieces are used
(`backbone`, `forward_head`), so kernels chosen there (e.g. the CPU deformable convolution)
are what gets traced.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from glipcli.config import PostProcessConfig
from glipcli.export.postprocess import GraphPostProcessor, rescale_to_originals
from glipcli.modeling.glip import GLIP
from glipcli.modeling.language import TextFeatures

INPUT_NAMES = ("images", "image_sizes", "original_sizes")
OUTPUT_NAMES = ("boxes", "scores", "phrases", "batch_index")


class DetectorGraph(nn.Module):
    """model: a GLIP in eval mode (an attached prompt-tuning adapter is honoured, since the text
    features are computed by the caller); text: the prompt's `TextFeatures` (batch 1, only the
    real tokens); token_spans: per phrase, its token positions."""

    def __init__(self, model: GLIP, text: TextFeatures, token_spans: Sequence[Sequence[int]],
                 postprocess: PostProcessConfig | None = None):
        super().__init__()
        self.model = model
        for name in ("hidden", "embedded", "mask", "aggregate"):
            self.register_buffer(f"text_{name}", getattr(text, name).detach().clone(), persistent=False)
        self.post = GraphPostProcessor(postprocess or model.cfg.postprocess, token_spans)

    def baked_text(self, batch: int) -> TextFeatures:
        return TextFeatures(hidden=self.text_hidden.expand(batch, -1, -1),
                            embedded=self.text_embedded.expand(batch, -1, -1),
                            mask=self.text_mask.expand(batch, -1),
                            aggregate=self.text_aggregate.expand(batch, -1))

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor, original_sizes: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = self.model.forward_head(self.model.backbone(images), self.baked_text(images.shape[0]))
        head = outputs.head
        boxes, scores, phrases, batch_index = self.post(head.box_regression, head.centerness, head.token_logits,
                                                        outputs.anchors, image_sizes)
        return rescale_to_originals(boxes, batch_index, image_sizes, original_sizes), scores, phrases, batch_index
