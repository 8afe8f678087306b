"""The GLIP detector: Swin+FPN image encoder, BERT text encoder, deep-fusion VLDyHead."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from glipcli.config import GLIPConfig
from glipcli.modeling.anchors import grid_anchors
from glipcli.modeling.backbone import VisualBackbone
from glipcli.modeling.head import HeadOutputs, VLDyHead
from glipcli.modeling.language import LanguageBackbone, TextFeatures


@dataclass
class GLIPOutputs:
    """Raw outputs for a padded image batch; see `HeadOutputs`. anchors: per level [H_l*W_l, 4]
    (xyxy, resized-image pixels), shared by all images of the batch."""

    head: HeadOutputs
    anchors: list[torch.Tensor]
    features: list[torch.Tensor]


class GLIP(nn.Module):
    def __init__(self, cfg: GLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = VisualBackbone(cfg.swin, cfg.fpn)
        self.language = LanguageBackbone(cfg.language)
        self.head = VLDyHead(cfg.head, cfg.language, num_levels=len(cfg.anchors.strides))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """input_ids, attention_mask: [B, L]. The result can be reused across images."""
        return self.language(input_ids, attention_mask)

    def forward(self, images: torch.Tensor, text: TextFeatures) -> GLIPOutputs:
        """images: [B, 3, H, W] normalised and padded; text: `encode_text` output, batch B or 1
        (a single caption is shared by every image)."""
        return self.forward_head(self.backbone(images), text)

    def forward_head(self, features: list[torch.Tensor], text: TextFeatures) -> GLIPOutputs:
        """Fusion head + grounding outputs from FPN features (P3..P7, each [B, C, H_l, W_l]).

        The image backbone does not depend on the caption, so a caller running several captions
        over the same images (chunked long class lists) computes `backbone(images)` once."""
        batch = features[0].shape[0]
        if text.hidden.shape[0] != batch:
            text = _expand_text(text, batch)
        head = self.head(features, text)
        anchors = grid_anchors([f.shape[-2:] for f in features], self.cfg.anchors.sizes,
                               self.cfg.anchors.strides, device=features[0].device)
        return GLIPOutputs(head=head, anchors=anchors, features=features)


def expand_for_prompts(features: list[torch.Tensor], prompts: int) -> list[torch.Tensor]:
    """FPN levels [B, C, H, W] -> [prompts * B, C, H, W], prompt-major (row p * B + b is
    prompt p over image b): the image features shared by a batch of captions."""
    if prompts == 1:
        return features
    return [f.unsqueeze(0).expand(prompts, *f.shape).reshape(-1, *f.shape[1:]) for f in features]


def _expand_text(text: TextFeatures, batch: int) -> TextFeatures:
    if text.hidden.shape[0] != 1:
        raise ValueError(f"text batch {text.hidden.shape[0]} does not match image batch {batch}")
    return TextFeatures(
        hidden=text.hidden.expand(batch, -1, -1),
        embedded=text.embedded.expand(batch, -1, -1),
        mask=text.mask.expand(batch, -1),
        aggregate=text.aggregate.expand(batch, -1),
        has_padding=text.has_padding,
    )
