"""What fine-tuning trains through: GLIP, plus the prompt offset when prompt tuning."""

from __future__ import annotations

import torch
from torch import nn

from glipcli.engine.prompt_tuning import TextOffset
from glipcli.modeling.glip import GLIP, GLIPOutputs


class GroundingTrainModule(nn.Module):
    """What is trained: GLIP, plus the prompt offset when prompt tuning. With a frozen language
    backbone the text is encoded once (without gradients) and reused."""

    def __init__(self, glip: GLIP, text_offset: TextOffset | None = None, frozen_text: bool = False):
        super().__init__()
        self.glip = glip
        self.text_offset = text_offset
        self.frozen_text = frozen_text
        self._text_cache = None

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> GLIPOutputs:
        if self.frozen_text:
            if self._text_cache is None:
                with torch.no_grad():
                    self._text_cache = self.glip.encode_text(input_ids, attention_mask)
            text = self._text_cache
        else:
            text = self.glip.encode_text(input_ids, attention_mask)
        if self.text_offset is not None:
            text = self.text_offset(text)
        return self.glip(images, text)
