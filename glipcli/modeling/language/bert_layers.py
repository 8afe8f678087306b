"""BERT's building blocks, with the parameter names of `transformers`' BertModel (so official and
hub weights map one to one): the embeddings and the encoder layer, plain or with GLIP's overflow
clamps (`fusion.text_layer.ClampedBertLayer`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glipcli.config import LanguageConfig


class BertEmbeddings(nn.Module):
    """Word + token-type (all type 0) + absolute position embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [B, L] -> [B, L, D]."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embedded = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        embedded = embedded + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(embedded))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = cfg.attention_dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, heads, L, head_dim]."""
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D]; additive_mask: [B, 1, 1, L] (0 or the dtype's minimum). Returns [B, L, D]."""
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        b, _, s, _ = out.shape
        return out.transpose(1, 2).reshape(b, s, -1)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)


class BertOutput(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] (1 = real token) -> [B, 1, 1, L]: 0 where real, the dtype's minimum where padded."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class BertLayer(nn.Module):
    """One BERT encoder layer (post-LayerNorm, exact GELU)."""

    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden: [B, L, D]; mask: [B, 1, 1, L] additive. Returns [B, L, D]."""
        attn = self.attention.output(self.attention.self(hidden, mask), hidden)
        inter = F.gelu(self.intermediate.dense(attn))
        return self.output.LayerNorm(self.output.dropout(self.output.dense(inter)) + attn)


class _Encoder(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_layers))


class BertEncoder(nn.Module):
    """BERT without the pooler: embeddings, then `num_layers` layers. Initialised as BERT is
    (normal 0.02, zero biases, unit LayerNorms, a zero padding embedding)."""

    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = _Encoder(cfg)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.embeddings.word_embeddings.weight[0].zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: [B, L] int64 -> last layer [B, L, D]."""
        hidden = self.embeddings(input_ids)
        mask = additive_mask(attention_mask, hidden.dtype)
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask)
        return hidden
