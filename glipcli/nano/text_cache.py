"""Frozen text features of pre-training captions, computed once per distinct caption."""

from __future__ import annotations

from collections import OrderedDict

import torch

from glipcli.modeling.glip import GLIP
from glipcli.modeling.language import TextFeatures


class TextEncoderCache:
    """Frozen text features per distinct caption (token ids), encoded alone, least recently used
    dropped beyond `capacity` captions."""

    def __init__(self, model: GLIP, capacity: int, device: torch.device):
        self.model = model
        self.capacity = capacity
        self.device = device
        self._store: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)[None]
        return self.model.encode_text(ids, torch.ones_like(ids)).hidden[0].float()

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        key = tuple(ids.tolist())
        found = self._store.get(key)
        if found is not None:
            self.hits += 1
            self._store.move_to_end(key)
            return found
        self.misses += 1
        value = self._encode(ids)
        if self.capacity > 0:
            self._store[key] = value
            if len(self._store) > self.capacity:
                self._store.popitem(last=False)
        return value

    def batch(self, ids_list: list[torch.Tensor]) -> TextFeatures:
        """Padded `TextFeatures` [B, L_max] (padded positions zero and masked)."""
        rows = [self.hidden(ids) for ids in ids_list]
        length = max(r.shape[0] for r in rows)
        width = rows[0].shape[1]
        hidden = rows[0].new_zeros((len(rows), length, width))
        mask = torch.zeros((len(rows), length), dtype=torch.long, device=hidden.device)
        for i, r in enumerate(rows):
            hidden[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = 1
        counts = mask.sum(-1, keepdim=True).to(hidden.dtype)
        return TextFeatures(hidden=hidden, embedded=hidden, mask=mask, aggregate=hidden.sum(1) / counts)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
