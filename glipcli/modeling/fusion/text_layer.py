"""The BERT layer that follows each fusion step in the head, with GLIP's overflow clamps.

Parameter names follow `transformers`' BertLayer so official weights map one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from glipcli.config import LanguageConfig


class _SelfAttention(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = cfg.attention_dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor, clamp: float) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        # Clamped BEFORE the mask is added (official order), so masked scores stay very negative.
        scores = scores.clamp(-clamp, clamp) + additive_mask
        probs = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = probs @ v
        b, _, s, _ = out.shape
        return out.transpose(1, 2).reshape(b, s, -1)


class _SelfOutput(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _SelfOutput(cfg)


class _Intermediate(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)


class _Output(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)


class ClampedBertLayer(nn.Module):
    """A BERT encoder layer whose attention scores and feed-forward activations are clamped to
    +-`clamp` (GLIP's guard against fp16 overflow)."""

    def __init__(self, cfg: LanguageConfig, clamp: float = 50000.0):
        super().__init__()
        self.clamp = clamp
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _Output(cfg)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden: [B, L, D]; mask: [B, L] (1 = real token). Returns [B, L, D]."""
        c = self.clamp
        additive_mask = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        attn = self.attention.self(hidden, additive_mask, c)
        attn = self.attention.output(attn, hidden)
        inter = F.gelu(self.intermediate.dense(attn).clamp(-c, c)).clamp(-c, c)
        out = self.output.dropout(self.output.dense(inter)).clamp(-c, c)
        return self.output.LayerNorm(out + attn).clamp(-c, c)
