"""X-MHA: the bi-directional cross-modality attention that fuses image and text (GLIP Eq. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The official code masks padded text tokens with this additive value (not -inf).
_TEXT_MASK_VALUE = -9e15


class BiMultiHeadAttention(nn.Module):
    """Multi-head attention in both directions between N visual positions and L tokens.

    Vision->text: each visual position attends over the (unmasked) tokens.
    Text->vision: each token attends over ALL visual positions (padding included).
    """

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int,
                 dropout: float = 0.1, clamp_value: float = 50000.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.clamp_value = clamp_value
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for proj in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj,
                     self.out_v_proj, self.out_l_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, E] -> [B, heads, S, head_dim]."""
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """[B, heads, S, head_dim] -> [B, S, E]."""
        b, _, s, _ = x.shape
        return x.transpose(1, 2).reshape(b, s, self.embed_dim)

    def forward(self, v: torch.Tensor, l: torch.Tensor, text_mask: torch.Tensor | None,
                has_padding: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """v: [B, N, Cv] visual tokens; l: [B, L, Cl] text tokens; text_mask: [B, L] (1 = real);
        has_padding: whether text_mask has a 0 (None: read from the mask, a host sync).

        Returns the two updates (delta_v [B, N, Cv], delta_l [B, L, Cl]), before layer scale.
        """
        if self.num_heads * l.shape[1] < self.embed_dim:
            return self._forward_factorized(v, l, text_mask, has_padding)
        return self._forward_projected(v, l, text_mask)

    def _probabilities(self, logits: torch.Tensor, text_mask: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [B, h, N, L] -> (vision->text probs [B, h, N, L], text->vision probs [B, h, L, N])."""
        c = self.clamp_value
        logits = logits.clamp(-c, c)
        logits_t = logits.transpose(-1, -2)
        logits_t = (logits_t - logits_t.amax(dim=-1, keepdim=True)).clamp(-c, c)
        probs_l = logits_t.softmax(dim=-1)
        if text_mask is not None:
            # In float32 (the official code adds a float32 mask): -9e15 overflows float16 under
            # autocast. A no-op for float32 logits.
            logits = logits.float().masked_fill(text_mask[:, None, None, :] == 0, _TEXT_MASK_VALUE)
        probs_v = logits.softmax(dim=-1).to(probs_l.dtype)
        probs_v = F.dropout(probs_v, p=self.dropout, training=self.training)
        probs_l = F.dropout(probs_l, p=self.dropout, training=self.training)
        return probs_v, probs_l

    def _forward_projected(self, v, l, text_mask):
        """The official formulation: project every visual position to the embed width."""
        query = self._heads(self.v_proj(v) * self.scale)
        key = self._heads(self.l_proj(l))
        value_v = self._heads(self.values_v_proj(v))
        value_l = self._heads(self.values_l_proj(l))
        probs_v, probs_l = self._probabilities(query @ key.transpose(-1, -2), text_mask)
        out_v = self.out_v_proj(self._merge(probs_v @ value_l))
        out_l = self.out_l_proj(self._merge(probs_l @ value_v))
        return out_v, out_l

    def _forward_factorized(self, v, l, text_mask, has_padding=None):
        """The same function re-associated around the few text tokens.

        Per head, q k^T = s (v Wq_h^T + bq_h) k_h^T = v (s Wq_h^T k_h^T) + s bq_h k_h^T, so the N
        visual positions meet a [Cv, L] matrix instead of being projected to the embed width;
        likewise probs_v @ (value_l_h Wo_h^T) folds the output projection into the L values, and
        probs_l @ (v Wvv_h^T + bvv_h) = (probs_l @ v) Wvv_h^T + rowsum(probs_l) bvv_h. The cost
        scales with heads x tokens rather than with the 2048-wide embedding.

        The logits stay in the product's layout [B, N, heads x L]: the vision->text softmax runs
        over its last axis (per head) and the text->vision softmax over N, so no [B, h, N, L]
        tensor is ever permuted or copied (for 80 classes one is ~35M numbers a layer). The
        official text->vision logits subtract their maximum and clamp again before the softmax;
        after the subtraction every logit is <= 0 and one that the clamp would change is below
        -50000, whose exponential is 0 either way, so that step is the softmax's own.
        """
        b, n, cv = v.shape
        heads, hd = self.num_heads, self.head_dim
        length = l.shape[1]
        c = self.clamp_value
        key = self._heads(self.l_proj(l))  # [B, h, L, hd]
        wq = self.v_proj.weight.view(heads, hd, cv)  # rows of head h
        bq = self.v_proj.bias.view(heads, hd)
        # [B, h, Cv, L] and [B, h, L]
        query_key = torch.einsum("hdc,bhld->bhcl", wq, key) * self.scale
        query_bias = torch.einsum("hd,bhld->bhl", bq, key) * self.scale
        logits = torch.baddbmm(query_bias.reshape(b, 1, heads * length), v,
                               query_key.permute(0, 2, 1, 3).reshape(b, cv, heads * length))  # [B, N, h*L]
        grad = torch.is_grad_enabled() and logits.requires_grad
        logits = logits.clamp(-c, c) if grad else logits.clamp_(-c, c)
        probs_l = softmax_over_positions(logits)  # text->vision, [B, h*L, N]
        per_head = logits.view(b, n, heads, length)
        if text_mask is not None and has_padding is None:
            has_padding = not bool(text_mask.all())
        if text_mask is not None and has_padding:
            # In float32 (the official code adds a float32 mask): -9e15 overflows float16.
            per_head = per_head.float().masked_fill(text_mask[:, None, None, :] == 0, _TEXT_MASK_VALUE)
        probs_v = per_head.softmax(dim=-1).to(probs_l.dtype).view(b, n, heads * length)
        probs_v = F.dropout(probs_v, p=self.dropout, training=self.training)
        probs_l = F.dropout(probs_l, p=self.dropout, training=self.training)

        value_l = self._heads(self.values_l_proj(l))  # [B, h, L, hd]
        wo = self.out_v_proj.weight.view(cv, heads, hd)
        value_out = torch.einsum("bhld,chd->bhlc", value_l, wo)  # [B, h, L, Cv]
        out_v = torch.baddbmm(self.out_v_proj.bias.view(1, 1, cv).expand(b, 1, cv), probs_v,
                              value_out.reshape(b, heads * length, cv))

        pooled = (probs_l @ v).view(b, heads, length, cv)  # [B, h, L, Cv]
        wvv = self.values_v_proj.weight.view(heads, hd, cv)
        value_v = torch.einsum("bhlc,hdc->bhld", pooled, wvv)
        bias = self.values_v_proj.bias.view(1, heads, 1, hd)
        if self.training and self.dropout > 0:  # dropped probabilities no longer sum to one
            value_v = value_v + probs_l.sum(-1).view(b, heads, length, 1) * bias
        else:  # a softmax over N sums to one: skip a pass over [N, heads x L]
            value_v = value_v + bias
        out_l = self.out_l_proj(self._merge(value_v))
        return out_v, out_l


def softmax_over_positions(logits: torch.Tensor, transpose_first: bool | None = None) -> torch.Tensor:
    """Softmax of logits [B, N, K] over the N positions, returned as [B, K, N] (a view on the CPU).

    On a GPU a softmax over a middle axis is a strided kernel with one thread per column (about
    12 ms a fusion layer for GLIP-T at 800x1216 on an H200, 2026-12-04), so the logits are first
    transposed into place and the fast last-axis kernel runs; on the CPU the strided softmax is
    fast and the copy is not. transpose_first: None chooses by device."""
    if logits.is_cuda if transpose_first is None else transpose_first:
        return logits.transpose(1, 2).softmax(dim=-1)
    return logits.softmax(dim=1).transpose(1, 2)


class BiAttentionBlock(nn.Module):
    """One fusion step over all pyramid levels at once, with layer scale.

    The residual is added to the NORMALISED inputs, as in the official implementation.
    """

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int,
                 dropout: float = 0.1, init_layer_scale: float = 1.0 / 6,
                 clamp_value: float = 50000.0):
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads, dropout, clamp_value)
        self.gamma_v = nn.Parameter(torch.full((v_dim,), init_layer_scale))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), init_layer_scale))

    def forward(self, visual: list[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor,
                has_padding: bool | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """visual: per level [B, C, H_i, W_i]; text: [B, L, D]; text_mask: [B, L]; has_padding:
        see `BiMultiHeadAttention.forward`.

        Returns the fused levels (same shapes) and the fused text [B, L, D].
        """
        sizes = [f.shape[-2:] for f in visual]
        v = self.layer_norm_v(torch.cat([f.flatten(2) for f in visual], dim=2).transpose(1, 2))  # [B, N, C]
        l = self.layer_norm_l(text)
        delta_v, delta_l = self.attn(v, l, text_mask, has_padding)
        in_place = not (torch.is_grad_enabled() or torch.jit.is_tracing())
        if in_place and v.dtype == delta_v.dtype == self.gamma_v.dtype:
            v = delta_v.mul_(self.gamma_v).add_(v)  # inference: the same sum, one [B, N, C] map fewer
        else:
            v = v + self.gamma_v * delta_v
        l = l + self.gamma_l * delta_l
        v = v.transpose(1, 2)
        out, start = [], 0
        for h, w in sizes:
            out.append(v[:, :, start:start + h * w].reshape(v.shape[0], -1, h, w))
            start += h * w
        return out, l
