"""The opt-in fast path: GLIP's forward (backbone + fusion head) under `torch.compile`.

On a GPU, GLIP-T at batch 1 is bound by kernel launches (5 levels x 3 deformable branches x 6
layers of small kernels). `torch.compile(mode="reduce-overhead")` fuses the elementwise work and
replays the whole forward as CUDA graphs. Both need fixed shapes, so inputs are padded to a few
buckets: image sides to the next bucket edge (multiples of `step` pixels, plus the preset's own
padded min and max sizes, so an 800 x 1333 image is not padded further), captions to the next
multiple of `text_step` tokens (padding is masked, so real tokens get what they would get
alone). Each bucket (image size, caption length, batch) is compiled and captured once, on its
first call: that call takes tens of seconds, every later one with the same bucket is fast.

The image padding is the same zero padding a batch of images of different sizes gets; like it,
it may move scores slightly compared with the unpadded image. Results equal the eager model run
on the same padded input (tests/test_cuda.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from glipcli.config import InputConfig
from glipcli.modeling.language import TextFeatures

# torch.compile's modes, and "cudagraphs": the traced graph replayed as CUDA graphs without
# inductor's code generation (no fusion, but it compiles in a fraction of the time).
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "cudagraphs")


def bucket_edges(cfg: InputConfig, step: int = 128) -> list[int]:
    """Padded side lengths a compiled forward accepts, ascending: the multiples of `step` up to
    the padded max size, plus the padded min and max sizes of the preprocessing."""
    divisible = max(cfg.size_divisible, 1)

    def padded(side: int) -> int:
        return int(math.ceil(side / divisible) * divisible)

    top = padded(cfg.max_size)
    return sorted({*range(step, top + 1, step), padded(cfg.min_size), top})


def bucket_side(side: int, edges: list[int], step: int = 128) -> int:
    """The smallest edge >= side; beyond the last edge, the next multiple of `step`."""
    for edge in edges:
        if edge >= side:
            return edge
    return int(math.ceil(side / step) * step)


def pad_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad [B, 3, H, W] at the bottom/right to [B, 3, height, width] (as batch_images pads)."""
    extra_h, extra_w = height - images.shape[-2], width - images.shape[-1]
    if extra_h == 0 and extra_w == 0:
        return images
    return torch.nn.functional.pad(images, (0, extra_w, 0, extra_h))


def expand_for_prompts(features: list[torch.Tensor], prompts: int) -> list[torch.Tensor]:
    """FPN levels [B, C, H, W] -> [prompts * B, C, H, W], prompt-major (row p * B + b is
    prompt p over image b): the image features shared by a batch of captions."""
    if prompts == 1:
        return features
    return [f.unsqueeze(0).expand(prompts, *f.shape).reshape(-1, *f.shape[1:]) for f in features]


def grounding_forward(model: nn.Module, images: torch.Tensor, hidden: torch.Tensor, embedded: torch.Tensor,
                      mask: torch.Tensor, prompts: int = 1
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Backbone once, then the head over `prompts` captions x the B images.

    images: [B, 3, H, W]; hidden, embedded: [prompts * B, L, D] (prompt-major); mask: [prompts * B, L].
    Returns per level (token_logits [P*B, H_l*W_l, L], box_regression [P*B, 4, H_l, W_l],
    centerness [P*B, 1, H_l, W_l]). Plain tensors in and out, so that it compiles as one graph."""
    features = expand_for_prompts(model.backbone(images), prompts)
    text = TextFeatures(hidden=hidden, embedded=embedded, mask=mask, aggregate=hidden[:, 0])
    head = model.head(features, text)
    return head.token_logits, head.box_regression, head.centerness


class CompiledGLIP:
    """`grounding_forward` of one model under torch.compile, with inputs padded to buckets.

    mode: one of MODES ("reduce-overhead": inductor's fused kernels replayed as CUDA graphs on a
    GPU; on the CPU CUDA graphs do not apply and inductor fuses the elementwise work in C++)."""

    def __init__(self, model: nn.Module, mode: str = "reduce-overhead", step: int = 128, text_step: int = 32):
        if mode not in MODES:
            raise ValueError(f"unknown compile mode {mode!r}; choose one of: {', '.join(MODES)}")
        self.model = model
        self.mode = mode
        self.step = step
        self.text_step = text_step
        self.edges = bucket_edges(model.cfg.input, step)
        # Each bucket is one compiled graph; the default limit (8) would fall back to eager
        # after a few image sizes.
        config = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(config, name):
                setattr(config, name, max(getattr(config, name), 64))
        if mode == "cudagraphs":
            self._forward = torch.compile(grounding_forward, backend="cudagraphs", dynamic=False)
        else:
            self._forward = torch.compile(grounding_forward, mode=mode, dynamic=False)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        return bucket_side(height, self.edges, self.step), bucket_side(width, self.edges, self.step)

    def text_length(self, length: int) -> int:
        limit = self.model.cfg.language.max_query_len
        return min(max(limit, length), int(math.ceil(length / self.text_step) * self.text_step))

    def __call__(self, images: torch.Tensor, text: TextFeatures, prompts: int = 1
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """images [B, 3, H, W] (padded here to its bucket); text: [prompts * B, L, D] (padded
        here to a multiple of text_step tokens). Outputs as `grounding_forward`, over the
        padded image and text; read them before the next call (CUDA graphs reuse their memory)."""
        height, width = self.padded_size(*images.shape[-2:])
        images = pad_images(images, height, width)
        text = TextFeatures.stack([text], length=self.text_length(text.hidden.shape[1]))
        if self.mode in ("reduce-overhead", "max-autotune", "cudagraphs") and images.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()
        return self._forward(self.model, images, text.hidden.contiguous(), text.embedded.contiguous(),
                             text.mask.contiguous(), prompts)
