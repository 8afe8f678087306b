"""The BERT layer that follows each fusion step in the head, with GLIP's overflow clamps.

Parameter names follow `transformers`' BertLayer (the blocks of `language.bert_layers`) so
official weights map one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from glipcli.config import LanguageConfig
from glipcli.modeling.language.bert_layers import BertAttention, BertIntermediate, BertOutput, additive_mask


class ClampedBertLayer(nn.Module):
    """A BERT encoder layer whose attention scores and feed-forward activations are clamped to
    +-`clamp` (GLIP's guard against fp16 overflow)."""

    def __init__(self, cfg: LanguageConfig, clamp: float = 50000.0):
        super().__init__()
        self.clamp = clamp
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def _self_attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        sa, c = self.attention.self, self.clamp
        q, k, v = sa.heads(sa.query(x)), sa.heads(sa.key(x)), sa.heads(sa.value(x))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(sa.head_dim)
        # Clamped BEFORE the mask is added (official order), so masked scores stay very negative.
        scores = scores.clamp(-c, c) + mask
        probs = F.dropout(scores.softmax(dim=-1), p=sa.dropout, training=self.training)
        out = probs @ v
        b, _, s, _ = out.shape
        return out.transpose(1, 2).reshape(b, s, -1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden: [B, L, D]; mask: [B, L] (1 = real token). Returns [B, L, D]."""
        c = self.clamp
        attn = self.attention.output(self._self_attention(hidden, additive_mask(mask, hidden.dtype)), hidden)
        inter = F.gelu(self.intermediate.dense(attn).clamp(-c, c)).clamp(-c, c)
        out = self.output.dropout(self.output.dense(inter)).clamp(-c, c)
        return self.output.LayerNorm(out + attn).clamp(-c, c)
