"""BERT text encoder, built from a config (no hub access needed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig, BertModel

from glipcli.config import LanguageConfig


def bert_config(cfg: LanguageConfig) -> BertConfig:
    """The transformers `BertConfig` equivalent of our `LanguageConfig`."""
    config = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
        pad_token_id=0,
    )
    config._attn_implementation = "sdpa"
    return config


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
    """`transformers.BertModel` (no pooler) -> `TextFeatures` exactly as the official GLIP
    language backbone: features of the last layer, masked copy, and masked mean."""

    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.bert = BertModel(bert_config(cfg), add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """input_ids, attention_mask: [B, L] int64."""
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        mask_f = attention_mask.unsqueeze(-1).to(hidden.dtype)
        embedded = hidden * mask_f
        aggregate = embedded.sum(1) / attention_mask.sum(-1, keepdim=True).to(hidden.dtype)
        return TextFeatures(hidden=hidden, embedded=embedded, mask=attention_mask, aggregate=aggregate)
