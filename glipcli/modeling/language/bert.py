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
    has_padding: whether `mask` has any 0, when the caller knows it (None: the fusion reads the
    mask, a device-to-host sync; a known value keeps the forward free of syncs, as a CUDA graph
    capture needs).
    """

    hidden: torch.Tensor
    embedded: torch.Tensor
    mask: torch.Tensor
    aggregate: torch.Tensor
    has_padding: bool | None = None

    @staticmethod
    def stack(parts: "list[TextFeatures]") -> "TextFeatures":
        """Captions of different lengths as one batch [sum B_i, L, D], L the longest: the extra
        positions are padding (zero features, mask 0), which no real token ever attends to, so
        each caption's real tokens get what they would get alone."""
        length = max(p.hidden.shape[1] for p in parts)
        known = [p.has_padding for p in parts]
        padded = None if None in known else any(known) or any(p.hidden.shape[1] < length for p in parts)

        def pad(t: torch.Tensor) -> torch.Tensor:
            extra = length - t.shape[1]
            return t if extra == 0 else torch.cat([t, t.new_zeros((t.shape[0], extra, *t.shape[2:]))], dim=1)

        return TextFeatures(hidden=torch.cat([pad(p.hidden) for p in parts]),
                            embedded=torch.cat([pad(p.embedded) for p in parts]),
                            mask=torch.cat([pad(p.mask) for p in parts]),
                            aggregate=torch.cat([p.aggregate for p in parts]), has_padding=padded)


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
