"""The language backbone: a BERT text encoder built from a config (no hub access needed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from glipcli.config import LanguageConfig
from glipcli.modeling.language.bert_layers import BertEncoder


@dataclass
class TextFeatures:
    """Token features of a batch of captions.

    hidden:   [B, L, D] last BERT layer (updated by the fusion head later).
    embedded: [B, L, D] `hidden` with padded positions zeroed.
    mask:     [B, L] int64 attention mask (1 = real token).
    aggregate: [B, D] mean of the real tokens' features.
    """

    hidden: torch.Tensor
    embedded: torch.Tensor
    mask: torch.Tensor
    aggregate: torch.Tensor


class LanguageBackbone(nn.Module):
    """BERT (no pooler; `transformers.BertModel`'s parameter names) -> `TextFeatures` exactly as
    the official GLIP language backbone: features of the last layer, masked copy, masked mean.
    Our own few lines rather than `transformers.BertModel`, whose import alone costs ~0.2 GiB and
    seconds (it pulls in torch's compiler and distributed stacks)."""

    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.bert = BertEncoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """input_ids, attention_mask: [B, L] int64."""
        hidden = self.bert(input_ids, attention_mask)
        mask_f = attention_mask.unsqueeze(-1).to(hidden.dtype)
        embedded = hidden * mask_f
        aggregate = embedded.sum(1) / attention_mask.sum(-1, keepdim=True).to(hidden.dtype)
        return TextFeatures(hidden=hidden, embedded=embedded, mask=attention_mask, aggregate=aggregate)
