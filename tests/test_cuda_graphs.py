"""CUDA graphs (`GLIPPredictor(cuda_graphs=True)`, `--cuda-graphs`), what runs without a GPU:

- the forward from image tensor and encoded caption to the head outputs and anchors is capturable:
  once warm, it makes no host synchronisation (`.item()`, `bool(tensor)`, `nonzero`, boolean
  indexing), moves no host data in (`torch.tensor(list)`) and adds no cache entry (every aten
  op it runs is recorded, on the golden reduced model);
- the graph cache's keys and least-recently-used release, and that a hit refreshes the static
  inputs;
- the clear one-line error without a CUDA device.

The captures themselves are checked on a GPU in tests/test_cuda.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from glipcli.cli.main import main
from glipcli.errors import GlipError
from glipcli.modeling.anchors import cell_anchor, grid_anchors
from glipcli.modeling.backbone.swin import SwinStage
from glipcli.modeling.cuda_graphs import CapturedCall, GraphCache, GraphedGLIP, graph_key
from glipcli.modeling.glip import expand_for_prompts
from glipcli.modeling.language import TextFeatures
from glipcli.predictor import GLIPPredictor, _repeat_text
from golden_utils import golden_model, load
from test_model_parity import _prompt

# aten ops that read a device value on the host, or whose output shape depends on the data
SYNCING_OPS = {"aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal", "aten.nonzero",
               "aten.nonzero_static", "aten.masked_select", "aten._unique", "aten._unique2", "aten.unique_dim",
               "aten.unique_consecutive", "aten.argwhere"}
# host data becoming a tensor (torch.tensor(...)): a host-to-device copy on a GPU
HOST_DATA_OPS = {"aten.lift_fresh", "aten.lift_fresh_copy"}


class OpRecorder(TorchDispatchMode):
    """Records the aten ops run (overload packets, e.g. `aten.nonzero`) and boolean-mask indexing."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        name = name if name.startswith("aten.") else f"aten.{name}"
        self.ops.append(name)
        if name in ("aten.index", "aten.index_put", "aten.index_put_"):
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or []):
                self.ops.append("boolean-mask indexing")
        return func(*args, **(kwargs or {}))

    def forbidden(self) -> list[str]:
        return sorted({op for op in self.ops if op in SYNCING_OPS | HOST_DATA_OPS or op == "boolean-mask indexing"})


@pytest.fixture(scope="module")
def tiny(golden_dir):
    model = golden_model(str(golden_dir / "tiny"))
    return GLIPPredictor(copy.deepcopy(model)), load(str(golden_dir / "tiny" / "inputs.safetensors"))


def _mask_caches(model) -> dict[int, dict]:
    return {id(m): dict(m._mask_cache) for m in model.modules() if isinstance(m, SwinStage)}


def _graphed_region(model, images: torch.Tensor, text: TextFeatures, prompts: int):
    """What the graphs hold: backbone, then the head over the prompts sharing the images."""
    outputs = model.forward_head(expand_for_prompts(model.backbone(images), prompts), text)
    return outputs.head, outputs.anchors


def _captions(golden_dir, predictor):
    """The golden detection caption and a shorter class list."""
    return [_prompt(golden_dir, "tiny", "det"), predictor.encode_classes("dog. cat")]


@pytest.mark.parametrize("images, prompts", [(1, 1), (2, 2)])
def test_warm_forward_makes_no_sync_and_no_host_copy(golden_dir, tiny, images, prompts):
    """One caption over one image, and two captions of different lengths (padded, stacked as the
    predictor batches a long class list's chunks) over two images."""
    predictor, inputs = tiny
    model = predictor.model
    batch = inputs["image_tensor"].expand(images, -1, -1, -1).contiguous()
    captions = _captions(golden_dir, predictor)[:prompts]
    texts = [predictor.text_features(c) for c in captions]
    if prompts > 1:
        assert texts[0].hidden.shape[1] != texts[1].hidden.shape[1]
        text = TextFeatures.stack([_repeat_text(t, images) for t in texts])
        assert text.has_padding is True
    else:
        text = texts[0]
        assert text.has_padding is False
    with torch.inference_mode():
        expected, _ = _graphed_region(model, batch, text, prompts)  # warm-up: fills the caches
        caches = _mask_caches(model)
        with OpRecorder() as recorder:
            head, anchors = _graphed_region(model, batch, text, prompts)
    assert recorder.ops, "nothing was recorded"
    assert recorder.forbidden() == []
    assert _mask_caches(model) == caches  # the same entries, the same tensors: nothing made during a capture
    assert all(torch.equal(a, b) for a, b in zip(head.token_logits, expected.token_logits))
    assert len(anchors) == 5


def test_the_recorder_sees_a_sync(golden_dir, tiny):
    """The check above can fail: a caption whose padding is not known reads the mask back."""
    predictor, inputs = tiny
    texts = [predictor.text_features(c) for c in _captions(golden_dir, predictor)]
    text = TextFeatures.stack(texts)
    text = TextFeatures(text.hidden, text.embedded, text.mask, text.aggregate)  # has_padding unknown
    with torch.inference_mode(), OpRecorder() as recorder:
        _graphed_region(predictor.model, inputs["image_tensor"], text, 2)
    assert "aten.is_nonzero" in recorder.forbidden()  # bool(text_mask.all())
    with OpRecorder() as recorder:
        cell_anchor(64, 8)
    assert "aten.lift_fresh" in recorder.forbidden()


def test_known_padding_gives_the_same_outputs(golden_dir, tiny):
    """has_padding given (no sync) or left to be read from the mask: the same head outputs."""
    predictor, inputs = tiny
    texts = [predictor.text_features(c) for c in _captions(golden_dir, predictor)]
    for text in (texts[0], TextFeatures.stack(texts)):
        unknown = TextFeatures(text.hidden, text.embedded, text.mask, text.aggregate)
        prompts = text.hidden.shape[0]
        with torch.inference_mode():
            known_head, _ = _graphed_region(predictor.model, inputs["image_tensor"], text, prompts)
            read_head, _ = _graphed_region(predictor.model, inputs["image_tensor"], unknown, prompts)
        for a, b in zip(known_head.token_logits + known_head.box_regression,
                        read_head.token_logits + read_head.box_regression):
            assert torch.equal(a, b)


def test_stack_knows_its_padding():
    def text(length: int, padded: bool | None) -> TextFeatures:
        mask = torch.ones(1, length, dtype=torch.long)
        return TextFeatures(torch.zeros(1, length, 4), torch.zeros(1, length, 4), mask, torch.zeros(1, 4),
                            has_padding=padded)

    assert TextFeatures.stack([text(3, False), text(3, False)]).has_padding is False
    assert TextFeatures.stack([text(3, False), text(5, False)]).has_padding is True
    assert TextFeatures.stack([text(3, True), text(3, False)]).has_padding is True
    assert TextFeatures.stack([text(3, None), text(3, False)]).has_padding is None


def test_anchors_from_device_arithmetic_equal_the_cell_anchor_sums():
    sizes, strides = (64, 128, 256, 512, 1024), (8, 16, 32, 64, 128)
    shapes = [(13, 21), (7, 11), (4, 6), (2, 3), (1, 2)]
    for anchors, (h, w), size, stride in zip(grid_anchors(shapes, sizes, strides), shapes, sizes, strides):
        x = torch.arange(w, dtype=torch.float32) * stride
        y = torch.arange(h, dtype=torch.float32) * stride
        gy, gx = torch.meshgrid(y, x, indexing="ij")
        shifts = torch.stack((gx.reshape(-1), gy.reshape(-1), gx.reshape(-1), gy.reshape(-1)), dim=1)
        assert torch.equal(anchors, shifts + cell_anchor(size, stride))


# ---------------------------------------------------------------- the graph cache, without a GPU


class _Replay:
    """Stands in for a captured CUDA graph on the CPU: replay() recomputes into the outputs."""

    def __init__(self, fn, inputs, outputs):
        self.fn, self.inputs, self.outputs = fn, inputs, outputs

    def replay(self):
        for buffer, value in zip(self.outputs, self.fn(*self.inputs)):
            buffer.copy_(value)


class _CpuGraphCache(GraphCache):
    def _capture(self, fn, inputs):
        self.captures += 1
        static = [t.clone() for t in inputs]
        outputs = [o.clone() for o in fn(*static)]
        return CapturedCall(_Replay(fn, static, outputs), static, outputs)


def test_graph_key_tells_shapes_strides_dtypes_and_options_apart():
    x = torch.zeros(2, 3, 8, 8)
    assert graph_key([x]) == graph_key([torch.ones(2, 3, 8, 8)])
    assert graph_key([x]) != graph_key([torch.zeros(1, 3, 8, 8)])
    assert graph_key([x]) != graph_key([x.to(torch.bfloat16)])
    assert graph_key([x]) != graph_key([x.to(memory_format=torch.channels_last)])
    assert graph_key([x], ("bf16", 2)) != graph_key([x], ("bf16", 1))


def test_graph_cache_replays_refreshed_inputs_and_releases_the_least_recently_used():
    cache = _CpuGraphCache(max_graphs=2)

    def double(t):
        return [t * 2]

    a, b, c = torch.ones(2), torch.ones(3), torch.ones(4)
    first = cache.run(double, [a])[0]
    assert cache.captures == 1 and torch.equal(first, torch.full((2,), 2.0))
    # same key, new values: the static input is refreshed, the same output buffer returned
    again = cache.run(double, [torch.full((2,), 5.0)])[0]
    assert cache.captures == 1 and again is first and torch.equal(again, torch.full((2,), 10.0))
    cache.run(double, [b])
    assert cache.captures == 2 and len(cache) == 2
    cache.run(double, [a])  # a is now the most recently used
    cache.run(double, [c])  # a third key releases b
    assert cache.captures == 3 and len(cache) == 2
    assert graph_key([b]) not in cache and graph_key([a]) in cache
    assert cache.keys() == [graph_key([a]), graph_key([c])]
    # b again: released once, so run eagerly (a cycle over more keys than held never recaptures)
    eager = cache.run(double, [torch.full((3,), 4.0)])[0]
    assert cache.captures == 3 and cache.eager_runs == 1 and torch.equal(eager, torch.full((3,), 8.0))
    assert graph_key([b]) not in cache
    cache.clear()
    cache.run(double, [b])  # after clear(), captured again
    assert cache.captures == 4 and len(cache) == 1
    with pytest.raises(ValueError):
        GraphCache(max_graphs=0)


def _cpu_graphed(model) -> GraphedGLIP:
    """GraphedGLIP whose caches "capture" by recomputing on the CPU (`_CpuGraphCache`): its
    flattening of inputs and outputs and the predictor's use of it run without a GPU."""
    graphed = GraphedGLIP(model)
    graphed.backbone_graphs, graphed.head_graphs = _CpuGraphCache(), _CpuGraphCache()
    return graphed


def test_graphed_glip_rebuilds_the_head_outputs_in_order(golden_dir, tiny):
    predictor, inputs = tiny
    model = predictor.model
    texts = [predictor.text_features(c) for c in _captions(golden_dir, predictor)]
    graphed = _cpu_graphed(model)
    for images, text, prompts in ((1, texts[0], 1), (2, TextFeatures.stack([_repeat_text(t, 2) for t in texts]), 2)):
        batch = inputs["image_tensor"].expand(images, -1, -1, -1).contiguous()
        with torch.inference_mode():
            want = model.forward_head(expand_for_prompts(model.backbone(batch), prompts), text)
            got = graphed.forward_head(graphed.backbone(batch), text, prompts)
        for field in ("token_logits", "box_regression", "centerness", "visual"):
            assert all(torch.equal(a, b) for a, b in zip(getattr(got.head, field), getattr(want.head, field),
                                                         strict=True)), field
        assert torch.equal(got.head.text, want.head.text)
        assert all(torch.equal(a, b) for a, b in zip(got.anchors, want.anchors, strict=True))
    assert graphed.backbone_graphs.captures == 2 and graphed.head_graphs.captures == 2


def test_predictor_through_the_graphs_equals_eager(golden_dir, tiny):
    """The predictor's graphed path (CPU stand-in for the capture) gives the eager detections,
    for two captions batched through the head, called twice (the second a replay)."""
    eager, inputs = tiny
    graphed = GLIPPredictor(copy.deepcopy(eager.model))
    graphed.graphs = _cpu_graphed(graphed.model)
    image, hw = inputs["image_tensor"], [tuple(inputs["image_size_hw"].tolist())]
    prompts = _captions(golden_dir, eager)
    want = eager.detect_tensor_prompts(image, hw, prompts)
    for _ in range(2):
        got = graphed.detect_tensor_prompts(image, hw, prompts)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g[0].boxes, w[0].boxes) and torch.equal(g[0].scores, w[0].scores)
            assert torch.equal(g[0].labels, w[0].labels)
    assert graphed.graphs.backbone_graphs.captures == 1 and graphed.graphs.head_graphs.captures == 1


# ---------------------------------------------------------------- without a CUDA device


def test_cuda_graphs_need_a_cuda_device(golden_dir):
    model = golden_model(str(golden_dir / "tiny"))
    with pytest.raises(GlipError, match="--cuda-graphs needs a CUDA device"):
        GLIPPredictor(model, device="cpu", cuda_graphs=True)


def test_cli_cuda_graphs_on_the_cpu_is_a_one_line_error(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 40, 200)).save(tmp_path / "ok.png")
    for command in (["detect", str(tmp_path / "ok.png"), "-p", "dog"],
                    ["ground", str(tmp_path / "ok.png"), "a dog"],
                    ["label", str(tmp_path / "ok.png"), "-p", "dog", "-o", str(tmp_path / "out")]):
        code = main([*command, "--model", "nano", "--device", "cpu", "--cuda-graphs"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (command, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert "--cuda-graphs needs a CUDA device" in err
