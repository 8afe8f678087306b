"""The GLIP forward replayed from CUDA graphs (opt-in: `GLIPPredictor(cuda_graphs=True)`).

At batch 1 a GPU spends most of GLIP's forward waiting for the host to launch small kernels (the
Swin blocks, the fusion steps, five pyramid levels x three deformable branches in each head
layer). A CUDA graph records the kernels of one forward once and replays them all with one
launch.

A graph is fixed to the shapes and addresses of its inputs. `GraphCache` captures a function for
each key (its inputs' shapes, strides and dtypes, plus the caller's static options) on first
use: a few warm-up calls on a side stream (they fill the caches, e.g. the Swin shift masks, so
the capture allocates nothing that outlives it), then the capture into static input buffers. A
later call with the same key copies its inputs into those buffers and replays. The outputs are
the graph's static buffers, overwritten by its next replay: read or copy them before the next
call. At most `max_graphs` keys are held, the least recently used released first; a released key
asked for again runs eagerly rather than being captured anew, so a workload that cycles through
more keys than are held (many image sizes, a long class list's many chunk lengths) never spends
its time capturing.

Capture needs a forward without host synchronisation, host-to-device copies or data-dependent
shapes; tests/test_cuda_graphs.py checks the model's forward for them on the CPU.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from glipcli.device import autocast
from glipcli.errors import GlipError
from glipcli.modeling.glip import GLIP, GLIPOutputs, expand_for_prompts
from glipcli.modeling.head import HeadOutputs
from glipcli.modeling.head.dyconv import DeformConvNorm
from glipcli.modeling.language import TextFeatures

DEFAULT_MAX_GRAPHS = 4
WARMUP_CALLS = 2


@dataclass
class CapturedCall:
    """One captured graph: the buffers its kernels read and write."""

    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


def graph_key(inputs: Sequence[torch.Tensor], static: Hashable = ()) -> tuple:
    """What a graph is fixed to: each input's shape, strides and dtype, and the caller's options."""
    return (static, tuple((tuple(t.shape), t.stride(), t.dtype) for t in inputs))


class GraphCache:
    """Captured graphs of functions of tensors, least recently used first out.

    `run(fn, inputs, static)` returns `fn(*inputs)` (a list of tensors), from the graph captured
    for the key of `inputs` and `static`: `fn` must be the same function for the same key.
    A key released to make room runs `fn` eagerly from then on. `captures` counts the graphs
    captured, `eager_runs` the calls run eagerly, and `capture_seconds` is the time of the last
    capture (warm-up included)."""

    def __init__(self, max_graphs: int = DEFAULT_MAX_GRAPHS, warmup: int = WARMUP_CALLS):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1 (got {max_graphs})")
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: OrderedDict[tuple, CapturedCall] = OrderedDict()
        self._released: set[tuple] = set()
        self.captures = 0
        self.eager_runs = 0
        self.capture_seconds = 0.0

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: tuple) -> bool:
        return key in self._graphs

    def keys(self) -> list[tuple]:
        """Held keys, least recently used first."""
        return list(self._graphs)

    def run(self, fn: Callable[..., list[torch.Tensor]], inputs: Sequence[torch.Tensor],
            static: Hashable = ()) -> list[torch.Tensor]:
        key = graph_key(inputs, static)
        entry = self._graphs.get(key)
        if entry is None and key in self._released:
            self.eager_runs += 1
            return list(fn(*inputs))
        if entry is None:
            entry = self._capture(fn, inputs)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                released, _ = self._graphs.popitem(last=False)  # its graph and memory pool go with it
                self._released.add(released)
        else:
            self._graphs.move_to_end(key)
            for buffer, value in zip(entry.inputs, inputs, strict=True):
                buffer.copy_(value)
        entry.graph.replay()
        return entry.outputs

    def clear(self) -> None:
        """Release every graph; every key may be captured again."""
        self._graphs.clear()
        self._released.clear()

    def _capture(self, fn: Callable[..., list[torch.Tensor]], inputs: Sequence[torch.Tensor]) -> CapturedCall:
        start = time.perf_counter()
        device = inputs[0].device
        static = [t.clone() for t in inputs]  # same strides for dense inputs (expanded ones become contiguous)
        main = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn(*static)
        main.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the image-loading threads may use the CUDA runtime meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = list(fn(*static))
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise GlipError(f"capturing the CUDA graph failed ({reason}); run without --cuda-graphs") from error
        self.captures += 1
        self.capture_seconds = time.perf_counter() - start
        return CapturedCall(graph, static, outputs)


class GraphedGLIP:
    """A GLIP model's image backbone and head, each replayed from CUDA graphs (`GraphCache`).

    The backbone is keyed by the image batch's shape; the head by its feature maps', the
    caption's length and batch, the number of prompts sharing the images and whether the
    caption has padding. A reduced `dtype` runs under autocast inside the graph (its weight
    casts recorded too; autocast's cast cache is off, the cached casts would not outlive the
    capture).

    The deformable convolutions run with the `grid_sample` formulation (the CPU one; same
    function as torchvision's kernel within float rounding): torchvision's CUDA kernel launches
    on the default stream, not the current one (pytorch/vision issue 9513), which a capture
    cannot record. The model's modules are switched to it here, so the model's eager forward
    afterwards computes what the graphs do."""

    def __init__(self, model: GLIP, dtype: torch.dtype = torch.float32, max_graphs: int = DEFAULT_MAX_GRAPHS):
        self.model = model
        self.dtype = dtype
        for module in model.modules():
            if isinstance(module, DeformConvNorm):
                module.impl = "grid_sample"
        self.backbone_graphs = GraphCache(max_graphs)
        self.head_graphs = GraphCache(max_graphs)

    def _autocast(self, device: torch.device):
        return autocast(device, self.dtype, cache=False)

    def backbone(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: [B, 3, H, W] on the GPU -> FPN levels P3..P7 (static buffers)."""

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            with self._autocast(x.device):
                return self.model.backbone(x)

        return self.backbone_graphs.run(run, [images], static=self.dtype)

    def forward_head(self, features: list[torch.Tensor], text: TextFeatures, prompts: int = 1) -> GLIPOutputs:
        """`GLIP.forward_head(expand_for_prompts(features, prompts), text)` from a graph.

        features: FPN levels [B, C, H_l, W_l]; text: batch 1 or prompts x B (prompt-major).
        The returned head outputs and anchors are static buffers; `features` are those given."""
        padded = text.has_padding
        if padded is None:  # one read, outside the graph
            padded = not bool(text.mask.all())
        levels = len(features)

        def run(*tensors: torch.Tensor) -> list[torch.Tensor]:
            maps = list(tensors[:levels])
            hidden, embedded, mask, aggregate = tensors[levels:]
            caption = TextFeatures(hidden, embedded, mask, aggregate, has_padding=padded)
            with self._autocast(maps[0].device):
                out = self.model.forward_head(expand_for_prompts(maps, prompts), caption)
            head = out.head
            return [*head.token_logits, *head.box_regression, *head.centerness, *head.visual, head.text,
                    *out.anchors]

        inputs = [*features, text.hidden, text.embedded, text.mask, text.aggregate]
        flat = self.head_graphs.run(run, inputs, static=(self.dtype, prompts, padded))
        parts = [flat[i * levels:(i + 1) * levels] for i in range(4)]
        head = HeadOutputs(token_logits=parts[0], box_regression=parts[1], centerness=parts[2], visual=parts[3],
                           text=flat[4 * levels])
        return GLIPOutputs(head=head, anchors=flat[4 * levels + 1:], features=list(features))
