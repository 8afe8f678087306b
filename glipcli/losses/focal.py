"""Token-level sigmoid focal loss on the dot-product (region-token alignment) logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, text_mask: torch.Tensor,
                             alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Binary sigmoid focal loss summed over every anchor x UNMASKED token (no normalisation).

    loss = alpha_t * (1 - p_t)^gamma * BCE-with-logits, with p_t = p*t + (1-p)*(1-t) and
    alpha_t = alpha*t + (1-alpha)*(1-t). Masked token positions (text_mask == 0, i.e. padding)
    contribute nothing. The unmasked entries are gathered in (image, anchor, token) order before
    the sum, as the official code does, which makes the result independent of how many masked
    columns the logits carry.

    Args:
        logits: [B, A, L]; targets: [B, A, L] in {0, 1}; text_mask: [B, L] (nonzero = real token).

    Returns:
        scalar tensor.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if text_mask.shape != (logits.shape[0], logits.shape[2]):
        raise ValueError(f"text_mask must be [B, L] = {(logits.shape[0], logits.shape[2])}, "
                         f"got {tuple(text_mask.shape)}")
    mask = (text_mask > 0).unsqueeze(1).expand_as(logits)
    x = torch.masked_select(logits, mask)
    t = torch.masked_select(targets.to(logits.dtype), mask)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
        loss = alpha_t * loss
    return loss.sum()
