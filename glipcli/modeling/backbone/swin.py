"""Swin Transformer image backbone, detection variant (any input size), as used by GLIP.

Token maps are kept channels-last, `[B, H, W, C]`, between blocks. Each block pads its map to
window multiples AFTER `norm1` (padded tokens are zeros and, as in the official code, are not
masked out of the attention), shifts odd blocks by `window // 2` with the standard region mask
computed on the padded size, and crops back. Parameter names follow the official checkpoint
with the `backbone.body.` prefix stripped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from glipcli.config import SwinConfig

# Additive attention bias between tokens of different regions in a shifted window (official value).
_CROSS_REGION_BIAS = -100.0


# Inference runs the MLP over slices of tokens whose hidden activations hold at most this many
# numbers (8192 tokens at the first stage of GLIP-T, fewer at the wider later stages).
_MLP_HIDDEN_PER_SLICE = 8192 * 384
# Inference attends to groups of windows whose qkv projection holds at most this many numbers
# (8192 tokens at the first stage of GLIP-T; see WindowAttention.forward).
_ATTENTION_QKV_PER_CHUNK = 8192 * 288


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch with prob `drop_prob`, rescale the rest.

    x: [B, ...] -> [B, ...]
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    """Module wrapper of `drop_path` (identity in eval mode)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def window_partition(x: Tensor, window: int) -> Tensor:
    """Split a padded map into non-overlapping windows.

    x: [B, Hp, Wp, C] (Hp, Wp multiples of `window`) -> [B * nW, window * window, C],
    windows in row-major order per image.
    """
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of `window_partition`: [B * nW, window * window, C] -> [B, h, w, C]."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> Tensor:
    """Index into the `(2w-1)^2`-row bias table for every (query, key) pair of a window.

    Returns int64 [w*w, w*w].
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)  # [2, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # [N, N, 2]
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> Tensor:
    """Additive mask for shifted-window attention on a padded map of size height x width.

    After the cyclic shift, a window may hold tokens of up to 4 regions that were not adjacent in
    the image; pairs from different regions get -100. Returns float32 [nW, w*w, w*w].
    """

    def region(n: int) -> Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window).long() + (idx >= n - shift).long()  # 0, 1 or 2 per row/col

    ids = region(height)[:, None] * 3 + region(width)[None, :]  # [H, W]
    ids = window_partition(ids[None, :, :, None], window).squeeze(-1)  # [nW, N]
    differs = ids[:, None, :] != ids[:, :, None]
    zeros = torch.zeros(differs.shape, device=device)
    return zeros.masked_fill(differs, _CROSS_REGION_BIAS)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        # Derived from the window size only; the checkpoint's stored copy is not needed.
        self.register_buffer(
            "relative_position_index", relative_position_index(window), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> Tensor:
        """Relative position bias per head: [nH, N, N] with N = window * window."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B * nW, N, C] (windows of each image contiguous); mask: [nW, N, N] additive or None
        -> [B * nW, N, C]."""
        bw, n, c = x.shape
        # windows in a group: of the B * nW alike ones without a mask, else of each image's nW
        per_chunk = _ATTENTION_QKV_PER_CHUNK // (n * 3 * c)
        if mask is None:
            units, images = bw, 1
        else:
            units, images = mask.shape[0], bw // mask.shape[0]
        per_chunk = max(1, per_chunk // images)
        if torch.is_grad_enabled() or torch.jit.is_tracing() or x.device.type != "cpu" or per_chunk >= units:
            return self._attend(x, mask)
        # CPU inference on a large map: a group of windows at a time, so the qkv projection, its
        # per-head copy and the [windows x heads, N, N] bias exist for one group only (on a GPU,
        # where memory is not the limit, more groups would only mean more kernel launches).
        out = torch.empty_like(x)
        if mask is None:  # every window alike: any split of the B * nW windows
            for start in range(0, bw, per_chunk):
                out[start:start + per_chunk] = self._attend(x[start:start + per_chunk], None)
            return out
        grouped, out_grouped = x.view(images, units, n, c), out.view(images, units, n, c)
        for start in range(0, units, per_chunk):
            windows = slice(start, start + per_chunk)
            part = grouped[:, windows].reshape(-1, n, c)
            out_grouped[:, windows] = self._attend(part, mask[windows]).view(images, -1, n, c)
        return out

    def _attend(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """`forward` over all the given windows at once."""
        bw, n, c = x.shape
        bias = self.position_bias()  # [nH, N, N]
        nw = 1 if mask is None else mask.shape[0]
        if mask is not None:
            bias = (mask.unsqueeze(1) + bias.unsqueeze(0)).flatten(0, 1)  # [nW * nH, N, N]
        # Fold (window, head) into one axis so the [nW * nH, N, N] bias broadcasts over images
        # without being copied B times. (The projection is not kept beside its per-head copy.)
        q, k, v = self.qkv(x).view(bw // nw, nw, n, 3, self.num_heads, c // self.num_heads).permute(
            3, 0, 1, 4, 2, 5).reshape(3, bw // nw, nw * self.num_heads, n, -1)
        # Fused kernel; matches the official (q * scale) @ k^T + bias -> softmax -> @ v within ~3e-6.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), scale=self.scale)
        out = out.view(bw // nw, nw, self.num_heads, n, -1).permute(0, 1, 3, 2, 4)
        return self.proj(out.reshape(bw, n, c))


class Mlp(nn.Module):
    """Token-wise feed-forward: Linear -> GELU -> Linear. [..., C] -> [..., C]"""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """One Swin block: (shifted) window attention and MLP, each pre-norm with a residual."""

    def __init__(
        self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: [B, H, W, C]; mask: [nW, N, N] for the padded size (used only if shifted) -> [B, H, W, C]."""
        b, h, w, c = x.shape
        y = self.norm1(x)
        pad_h = (self.window - h % self.window) % self.window
        pad_w = (self.window - w % self.window) % self.window
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = window_partition(y, self.window)  # (the shifted map is not kept beside its windows)
        y = self.attn(y, mask if self.shift else None)
        y = window_reverse(y, self.window, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        if pad_h or pad_w:
            y = y[:, :h, :w, :]
        x = x + self.drop_path(y)
        del y  # the attention branch is not kept while the MLP runs
        # (Traced for ONNX export, a slice count would be frozen at the example's size: one slice.)
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            return x + self.drop_path(self.mlp(self.norm2(x)))
        # Inference: the MLP runs over slices of tokens, added in place, so its 4x-wide hidden
        # activations never exist for the whole map at once (large images, P2-level maps).
        flat = x.view(-1, c)
        tokens = max(1, _MLP_HIDDEN_PER_SLICE // self.mlp.fc1.out_features)
        for start in range(0, flat.shape[0], tokens):
            rows = flat[start:start + tokens]
            rows += self.mlp(self.norm2(rows))
        return x


class PatchMerging(nn.Module):
    """2x2 downsampling: concatenate each 2x2 neighbourhood, LayerNorm(4C), Linear(4C -> 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C] (odd sizes zero-padded first)."""
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """A stack of Swin blocks (even: regular windows, odd: shifted), optionally followed by merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        drop_paths: list[float],
        downsample: bool,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else self.shift, mlp_ratio, drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self._mask_cache: dict[tuple[int, int, str], Tensor] = {}

    def shift_mask(self, h: int, w: int, device: torch.device) -> Tensor:
        """Cached shifted-window mask for an h x w map: [nW, N, N] on the padded size."""
        hp = (h + self.window - 1) // self.window * self.window  # (not -(-h // w): exported, that truncates)
        wp = (w + self.window - 1) // self.window * self.window
        if torch.jit.is_tracing():  # traced for ONNX export: computed from the recorded sizes, never cached
            return shifted_window_mask(hp, wp, self.window, self.shift, device)
        key = (hp, wp, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = shifted_window_mask(hp, wp, self.window, self.shift, device)
        return self._mask_cache[key]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """x: [B, H, W, C] -> (stage output [B, H, W, C], merged [B, H/2, W/2, 2C] or None)."""
        mask = self.shift_mask(x.shape[1], x.shape[2], x.device).to(x.dtype)
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else None)


class PatchEmbed(nn.Module):
    """Pad to multiples of the patch size, non-overlapping patch conv, LayerNorm over channels."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        """images: [B, 3, H, W] -> tokens [B, ceil(H/p), ceil(W/p), embed_dim]."""
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            images = F.pad(images, (0, (p - w % p) % p, 0, (p - h % p) % p))
        return self.norm(self.proj(images).permute(0, 2, 3, 1))


class SwinTransformer(nn.Module):
    """Swin backbone returning all four stage maps (official names stage2..stage5).

    Output norms `norm1..norm{S-1}` apply to stages 3.. (stage 2 is returned un-normalised, as the
    official *-RETINANET backbone does).
    """

    def __init__(self, cfg: SwinConfig, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        num_blocks = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        channels = cfg.stage_channels
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            start = sum(cfg.depths[:i])
            self.layers.append(
                SwinStage(
                    dim=channels[i],
                    depth=depth,
                    num_heads=cfg.num_heads[i],
                    window=cfg.window_size,
                    mlp_ratio=cfg.mlp_ratio,
                    drop_paths=rates[start : start + depth],
                    downsample=i < len(cfg.depths) - 1,
                    use_checkpoint=use_checkpoint,
                )
            )
        for i in range(1, len(cfg.depths)):
            self.add_module(f"norm{i}", nn.LayerNorm(channels[i]))
        self.apply(_init_weights)

    def forward(self, images: Tensor) -> list[Tensor]:
        """images: [B, 3, H, W] -> [B, C_i, H_i, W_i] per stage, C_i = embed_dim * 2^i,
        H_0 = ceil(H / patch), H_{i+1} = ceil(H_i / 2)."""
        x = self.patch_embed(images)
        outputs = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            if i > 0:
                out = getattr(self, f"norm{i}")(out)
            outputs.append(out.permute(0, 3, 1, 2).contiguous())
            del out  # not kept beside its channels-first copy while the next stage runs
        return outputs


def _init_weights(module: nn.Module) -> None:
    """Official init: truncated-normal(0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
