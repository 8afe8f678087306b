"""VLDyHead: the deep-fusion tower and the grounding head (token alignment scores, boxes,
centerness)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glipcli.config import HeadConfig, LanguageConfig
from glipcli.modeling.fusion import BiAttentionBlock, ClampedBertLayer
from glipcli.modeling.head.dyconv import DyConv
from glipcli.modeling.language import TextFeatures


class VLDyHeadLayer(nn.Module):
    """One tower layer: X-MHA fusion -> text BERT layer -> DyConv (GLIP-T), or DyConv alone
    (no early fusion, GLIP-T (A))."""

    def __init__(self, head: HeadConfig, language: LanguageConfig):
        super().__init__()
        if head.early_fusion:
            self.fusion = BiAttentionBlock(
                v_dim=head.channels, l_dim=language.hidden_size, embed_dim=head.fusion_embed_dim,
                num_heads=head.fusion_heads, dropout=head.fusion_dropout,
                init_layer_scale=1.0 / head.num_layers, clamp_value=head.clamp_value)
            self.text_layer = ClampedBertLayer(language, clamp=head.clamp_value)
        else:
            self.fusion = None
            self.text_layer = None
        self.dyconv = DyConv(head.channels, head.group_norm_groups)

    def forward(self, visual: list[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor,
                has_padding: bool | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """visual: per level [B, C, H_l, W_l]; text: [B, L, D]; text_mask: [B, L]; has_padding:
        whether text_mask has a 0 (None: unknown, read from the mask)."""
        if self.fusion is not None:
            visual, text = self.fusion(visual, text, text_mask, has_padding)
            text = self.text_layer(text, text_mask)
        return self.dyconv(visual), text


@dataclass
class HeadOutputs:
    """Per-level outputs of the grounding head (level l has H_l*W_l anchors).

    token_logits:   [B, H_l*W_l, L] alignment logits between each location and each token.
    box_regression: [B, 4, H_l, W_l] box deltas (already scaled per level).
    centerness:     [B, 1, H_l, W_l] centerness logits.
    visual:         [B, C, H_l, W_l] final visual features; text: [B, L, D] final text features.
    """

    token_logits: list[torch.Tensor]
    box_regression: list[torch.Tensor]
    centerness: list[torch.Tensor]
    visual: list[torch.Tensor]
    text: torch.Tensor


class VLDyHead(nn.Module):
    def __init__(self, head: HeadConfig, language: LanguageConfig, num_levels: int = 5):
        super().__init__()
        self.cfg = head
        c = head.channels
        self.layers = nn.ModuleList(VLDyHeadLayer(head, language) for _ in range(head.num_layers))
        # cls_logits is kept for checkpoint compatibility: GLIP scores with token alignment.
        self.cls_logits = nn.Conv2d(c, head.num_cls_logits, kernel_size=1)
        self.bbox_pred = nn.Conv2d(c, 4, kernel_size=1)
        self.centerness = nn.Conv2d(c, 1, kernel_size=1)
        self.scales = nn.ParameterList(nn.Parameter(torch.ones(1)) for _ in range(num_levels))
        self.token_projection = nn.Linear(language.hidden_size, c)
        prior_bias = -math.log((1 - head.prior_prob) / head.prior_prob)
        self.log_scale = nn.Parameter(torch.tensor([head.log_scale_init]))
        self.bias_lang = nn.Parameter(torch.zeros(language.hidden_size))
        self.bias0 = nn.Parameter(torch.tensor([prior_bias]))
        for conv in (self.cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, prior_bias)

    def token_logits(self, visual: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Alignment logits S = O P^T (+ a per-token bias) of one level.

        visual: [B, C, H, W]; tokens: [B, L, D] scoring text features. Returns [B, H*W, L].
        """
        emb = F.normalize(tokens, p=2, dim=-1)
        proj = self.token_projection(emb / 2.0)  # [B, L, C]
        token_bias = emb @ self.bias_lang + self.bias0  # [B, L]
        queries = visual.flatten(2).transpose(1, 2)  # [B, HW, C]
        logits = (queries @ proj.transpose(1, 2)) / self.log_scale.exp() + token_bias[:, None, :]
        c = self.cfg.clamp_value
        return logits.clamp(-c, c)

    def forward(self, features: list[torch.Tensor], text: TextFeatures) -> HeadOutputs:
        """features: FPN levels [B, C, H_l, W_l]; text: output of the language backbone."""
        visual, hidden = features, text.hidden
        for layer in self.layers:
            visual, hidden = layer(visual, hidden, text.mask, text.has_padding)
        scoring_tokens = hidden if self.cfg.fused_features_for_scoring else text.embedded
        token_logits, box_regression, centerness = [], [], []
        for level, x in enumerate(visual):
            box_regression.append(self.bbox_pred(x) * self.scales[level])
            centerness.append(self.centerness(x))
            token_logits.append(self.token_logits(x, scoring_tokens))
        return HeadOutputs(token_logits, box_regression, centerness, visual, hidden)
