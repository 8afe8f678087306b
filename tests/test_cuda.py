"""The GPU paths: golden parity on CUDA (torchvision's deformable-convolution kernel instead of the
CPU formulation), the training losses on CUDA, reduced precision, batched inference, and the chunks of
a long class list batched through the head.

These need an NVIDIA GPU and skip without one (CI has none); docs/performance.md says which ran where."""

from __future__ import annotations

import pytest
import torch

from glipcli.modeling.head.deform_conv import modulated_deform_conv3x3
from glipcli.predictor import GLIPPredictor
from golden_utils import golden_model, load, max_abs_diff
from test_model_parity import _assert_same_detections, _prompt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 matmuls would make fp32 parity a precision test of the tensor cores."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _cuda_copy(model):
    import copy

    return copy.deepcopy(model).cuda().eval()


# ---------------------------------------------------------------- CUDA graphs (first: the newest path)


def _graph_pair(golden_dir, dtype="float32"):
    """(graphed predictor, eager predictor) on two copies of the golden model, both with the
    deformable convolutions the graphs use (grid_sample), so they run the same kernels."""
    from glipcli.modeling.head.dyconv import DeformConvNorm

    graphed = GLIPPredictor(_cuda_copy(golden_model(str(golden_dir / "tiny"))), device="cuda", dtype=dtype,
                            cuda_graphs=True)
    eager_model = _cuda_copy(golden_model(str(golden_dir / "tiny")))
    for module in eager_model.modules():
        if isinstance(module, DeformConvNorm):
            module.impl = "grid_sample"
    return graphed, GLIPPredictor(eager_model, device="cuda", dtype=dtype)


def _same(a, b):
    return torch.equal(a.boxes.cpu(), b.boxes.cpu()) and torch.equal(a.scores.cpu(), b.scores.cpu()) \
        and torch.equal(a.labels.cpu(), b.labels.cpu())


def test_graphed_forward_gives_the_golden_detections(golden_dir):
    inputs = load(str(golden_dir / "tiny" / "inputs.safetensors"))
    ref = load(str(golden_dir / "tiny" / "outputs_det.safetensors"))
    prompt = _prompt(golden_dir, "tiny", "det")
    predictor = GLIPPredictor(_cuda_copy(golden_model(str(golden_dir / "tiny"))), device="cuda", cuda_graphs=True)
    image_hw = tuple(inputs["image_size_hw"].tolist())
    for call in range(2):  # the capture, then a replay
        (dets,) = predictor.detect_tensor(inputs["image_tensor"].cuda(), [image_hw], prompt)
        _assert_same_detections(dets.boxes.cpu(), dets.scores.cpu(), dets.labels.cpu(),
                                ref["final_boxes_resized"], ref["final_scores"], ref["final_labels"])
    assert predictor.graphs.backbone_graphs.captures == 1 and predictor.graphs.head_graphs.captures == 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graphed_equals_eager(golden_dir, dtype):
    """The replayed graphs compute what the eager forward does: float32 bit for bit; bfloat16
    the same boxes (both under autocast, the graph without autocast's weight-cast cache)."""
    graphed, eager = _graph_pair(golden_dir, dtype)
    inputs = load(str(golden_dir / "tiny" / "inputs.safetensors"))
    image, image_hw = inputs["image_tensor"].cuda(), [tuple(inputs["image_size_hw"].tolist())]
    prompts = [_prompt(golden_dir, "tiny", "det"), graphed.encode_classes("person. dog")]
    want = eager.detect_tensor_prompts(image, image_hw, prompts)  # two captions in one head batch (padded)
    for _ in range(2):
        got = graphed.detect_tensor_prompts(image, image_hw, prompts)
        for g, w in zip(got, want):
            if dtype == "float32":
                assert _same(g[0], w[0])
            else:
                assert len(g[0]) == len(w[0])
                assert max_abs_diff(g[0].scores.cpu().sort().values, w[0].scores.cpu().sort().values) < 1e-2


def test_graph_replay_reads_the_new_image_and_a_new_size_is_captured(golden_dir):
    graphed, eager = _graph_pair(golden_dir)
    inputs = load(str(golden_dir / "tiny" / "inputs.safetensors"))
    first = inputs["image_tensor"].cuda()
    second = first.flip(-1).contiguous()  # same size, other content
    hw = [tuple(inputs["image_size_hw"].tolist())]
    prompt = _prompt(golden_dir, "tiny", "det")
    got_first = graphed.detect_tensor(first, hw, prompt)[0]
    got_second = graphed.detect_tensor(second, hw, prompt)[0]
    assert graphed.graphs.backbone_graphs.captures == 1  # the second image replayed the first's graph
    assert _same(got_second, eager.detect_tensor(second, hw, prompt)[0])
    assert _same(got_first, eager.detect_tensor(first, hw, prompt)[0])  # not overwritten by the replay
    assert not _same(got_first, got_second)
    smaller = first[..., :, : first.shape[-1] - 32].contiguous()  # a new padded size
    small_hw = [(hw[0][0], min(hw[0][1], smaller.shape[-1]))]
    got_small = graphed.detect_tensor(smaller, small_hw, prompt)[0]
    assert graphed.graphs.backbone_graphs.captures == 2 and graphed.graphs.head_graphs.captures == 2
    assert _same(got_small, eager.detect_tensor(smaller, small_hw, prompt)[0])


def test_graphed_predict_batch_equals_eager(golden_dir):
    """Through predict (loading, batching, post-processing), a batch of two."""
    graphed, eager = _graph_pair(golden_dir)
    image = golden_dir / "tiny" / "image.png"
    want = eager.predict([image, image], "person. dog", batch_size=2)
    for _ in range(2):
        got = graphed.predict([image, image], "person. dog", batch_size=2)
        assert [r.to_dict() for r in got] == [r.to_dict() for r in want]


def test_deformable_conv_kernels_agree():
    """torchvision's CUDA kernel and the CPU grid-sample formulation compute the same thing."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 13, 17, generator=g)
    offset = 3 * torch.randn(2, 18, 13, 17, generator=g)  # reaches outside the image too
    mask = torch.rand(2, 9, 13, 17, generator=g)
    weight = torch.randn(8, 16, 3, 3, generator=g)
    bias = torch.randn(8, generator=g)
    for stride in (1, 2):
        h, w = (13 + stride - 1) // stride, (17 + stride - 1) // stride
        off, msk = offset[..., :h, :w].contiguous(), mask[..., :h, :w].contiguous()
        cpu = modulated_deform_conv3x3(x, off, msk, weight, bias, stride=stride, impl="grid_sample")
        gpu = modulated_deform_conv3x3(x.cuda(), off.cuda(), msk.cuda(), weight.cuda(), bias.cuda(), stride=stride,
                                       impl="auto")
        assert max_abs_diff(gpu.cpu(), cpu) < 1e-4


@pytest.mark.parametrize("variant", ["tiny", "tiny_a"])
@pytest.mark.parametrize("case", ["det", "grounding"])
def test_golden_detections_on_cuda(golden_dir, variant, case):
    model = _cuda_copy(golden_model(str(golden_dir / variant)))
    inputs = load(str(golden_dir / "tiny" / "inputs.safetensors"))
    ref = load(str(golden_dir / variant / f"outputs_{case}.safetensors"))
    prompt = _prompt(golden_dir, variant, case)
    predictor = GLIPPredictor(model, device="cuda")
    image_hw = tuple(inputs["image_size_hw"].tolist())
    (dets,) = predictor.detect_tensor(inputs["image_tensor"].cuda(), [image_hw], prompt)
    _assert_same_detections(dets.boxes.cpu(), dets.scores.cpu(), dets.labels.cpu(),
                            ref["final_boxes_resized"], ref["final_scores"], ref["final_labels"])


@pytest.mark.parametrize("variant", ["tiny", "tiny_a"])
def test_golden_training_loss_on_cuda(golden_dir, variant):
    """The golden training batch on CUDA (forward + ATSS + losses) gives the official losses."""
    from glipcli.losses import GLIPLoss
    from test_loss_parity import _assert_losses_match, _golden, _targets

    ref = _golden(golden_dir, variant, "loss")
    model = _cuda_copy(golden_model(str(golden_dir / variant)))
    cuda = {k: v.cuda() for k, v in ref.items()}
    with torch.no_grad():
        text = model.encode_text(cuda["input_ids"], cuda["attention_mask"])
        outputs = model(cuda["image_tensor"], text)
        out = GLIPLoss(model.cfg).compute(outputs, _targets(cuda), cuda["attention_mask"])
    _assert_losses_match({k: v.cpu() for k, v in out.losses.items()}, ref)
    for i in range(2):
        assert torch.equal(out.positive_indices[i].cpu(), ref[f"atss_positive_anchor_idx_img{i}"])


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    return box_iou(a, b)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_keeps_the_boxes(golden_dir, dtype):
    """>= 95% of the float32 detections above 0.05 are found again (same label, IoU >= 0.9)."""
    model = _cuda_copy(golden_model(str(golden_dir / "tiny")))
    image = golden_dir / "tiny" / "image.png"
    prompt = "person. bicycle. car. dog"
    full = GLIPPredictor(model, device="cuda").predict(image, prompt, box_threshold=0.05)[0].detections
    half = GLIPPredictor(model, device="cuda", dtype=dtype).predict(image, prompt, box_threshold=0.05)[0].detections
    assert full, "no float32 detection to compare"
    boxes = torch.tensor([d.box_xyxy for d in half]).reshape(-1, 4)
    matched = 0
    for d in full:
        same = [i for i, h in enumerate(half) if h.label == d.label]
        if same and _iou(torch.tensor([d.box_xyxy]), boxes[same]).max() >= 0.9:
            matched += 1
    assert matched >= 0.95 * len(full), (matched, len(full))


def test_batched_inference_on_cuda_equals_one_by_one(golden_dir):
    model = _cuda_copy(golden_model(str(golden_dir / "tiny")))
    predictor = GLIPPredictor(model, device="cuda")
    image = golden_dir / "tiny" / "image.png"
    one = predictor.predict(image, "person. dog")[0]
    both = predictor.predict([image, image], "person. dog", batch_size=2)
    for result in both:
        assert len(result.detections) == len(one.detections)
        for a, b in zip(result.detections, one.detections):
            assert a.label == b.label and abs(a.score - b.score) < 1e-4
            assert max(abs(x - y) for x, y in zip(a.box_xyxy, b.box_xyxy)) < 1e-2


# ---------------------------------------------------------------- chunks batched through the head


def test_chunks_batched_equal_one_after_another_on_cuda(golden_dir):
    """A long class list in chunks (120 LVIS names): all six chunks in one head batch give the
    detections of one chunk after another."""
    from glipcli.chunked_detection import detect_with_spec
    from glipcli.prompts.chunking import plan_chunks
    from glipcli.prompts.prompt_file import PromptSpec
    from test_chunking import _assert_same_detections as _same_results

    model = _cuda_copy(golden_model(str(golden_dir / "tiny")))
    names = (golden_dir.parent / "data" / "lvis_v1_class_names.txt").read_text().split("\n")[:120]
    plan = plan_chunks(PromptSpec.from_names([n for n in names if n.strip()]), chunk_size=20)
    assert len(plan.chunks) == 6
    image = golden_dir / "tiny" / "image.png"
    sequential = detect_with_spec(GLIPPredictor(model, device="cuda", prompt_batch_size=1), [image], plan)
    assert sequential[0].detections
    batched = detect_with_spec(GLIPPredictor(model, device="cuda", prompt_batch_size=6), [image], plan)
    _same_results(batched[0], sequential[0])
