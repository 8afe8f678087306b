"""Export a predictor + prompt as one ONNX detector file (see `DetectorGraph` for its signature).

    >>> from glipcli.export.onnx_export import export_onnx
    >>> meta = export_onnx(predictor, PromptSpec.from_prompts("pothole. crack."), "pothole.onnx")

The TorchScript-based exporter (`dynamo=False`) is used: it records the model's shape arithmetic,
so one file serves any image size and batch. (Through `torch.export` with dynamic sizes, the
symbolic reasoning over Swin's nested window paddings does not finish in useful time.)
The traced example has a padded size whose Swin stage maps all need window padding, so that
every shape-dependent branch is recorded in the form that serves every size.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from glipcli import __version__
from glipcli.chunked_detection import DEFAULT_SUPPRESS_IOU
from glipcli.errors import GlipError
from glipcli.export.graph import INPUT_NAMES, OUTPUT_NAMES, DetectorGraph
from glipcli.export.metadata import ExportMetadata
from glipcli.export.nms import register_torchscript_symbolic
from glipcli.io import atomic_write
from glipcli.outputs import OutputGuard
from glipcli.prompts.chunking import plan_chunks
from glipcli.prompts.prompt_file import PromptSpec

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = (16, 17, 18)  # GridSample needs 16
# 32 * (11, 13): no Swin stage map (1/4 .. 1/32 of it) is a multiple of a 7- or 12-token window.
EXAMPLE_HW = (352, 416)


def check_opset(opset: int) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise GlipError(f"unknown or unsupported ONNX opset {opset}; choose one of "
                        f"{', '.join(map(str, SUPPORTED_OPSETS))}")


def check_output(path: Path, overwrite: bool, inputs: Sequence[str | Path | None] = ()) -> None:
    """The output file passes the shared output guard (not an input, not a device or system file,
    not replaced without `overwrite`) and ends in .onnx."""
    if path.suffix.lower() != ".onnx":
        raise GlipError(f"{path}: the output of --format onnx must end in .onnx")
    OutputGuard(overwrite=overwrite, inputs=inputs).file(path, "--output")


def export_onnx(predictor, spec: PromptSpec, output: str | Path, opset: int = DEFAULT_OPSET,
                overwrite: bool = False, model_name: str = "", adapter: str | None = None,
                suppress_iou: float | None = DEFAULT_SUPPRESS_IOU) -> ExportMetadata:
    """Write `output` (atomically): the predictor's model (float32, CPU) with the spec's caption
    baked in. The spec must fit one caption of the model. Returns the metadata written."""
    import onnx  # the [onnx] extra

    output = Path(output)
    check_opset(opset)
    check_output(output, overwrite)
    if predictor.dtype != torch.float32:
        raise GlipError("export runs in float32; load the model with --dtype float32")
    cfg = predictor.cfg
    plan = plan_chunks(spec, max_tokens=cfg.language.max_query_len)
    if len(plan.chunks) != 1:
        raise GlipError(f"the prompt needs {len(plan.chunks)} captions of the model's {cfg.language.max_query_len} "
                        "tokens; an exported file holds one: export fewer classes per file")
    chunk = plan.chunks[0]
    prompt = chunk.prompt
    text = predictor.text_features(prompt)
    graph = DetectorGraph(predictor.model, text, prompt.token_spans).eval()
    device = predictor.device
    example = (torch.randn(1, 3, *EXAMPLE_HW, device=device), torch.tensor([EXAMPLE_HW], device=device),
               torch.tensor([EXAMPLE_HW], device=device))
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}, "image_sizes": {0: "batch"},
               "original_sizes": {0: "batch"}, **{name: {0: "detections"} for name in OUTPUT_NAMES}}
    register_torchscript_symbolic(opset)
    metadata = ExportMetadata(
        glip_version=__version__, model=model_name or cfg.name, caption=prompt.caption, classes=spec.names,
        phrases=[p.text for p in prompt.phrases],
        phrase_class=[-1 if (c := chunk.phrase_class(i + 1)) is None else c for i in range(len(prompt.phrases))],
        class_thresholds=[c.threshold for c in spec.classes], suppress_iou=suppress_iou if spec.suppress else None,
        min_size=cfg.input.min_size, max_size=cfg.input.max_size, size_divisible=cfg.input.size_divisible,
        pixel_mean=list(cfg.input.pixel_mean), pixel_std=list(cfg.input.pixel_std),
        score_threshold=cfg.postprocess.score_threshold, pre_nms_top_n=cfg.postprocess.pre_nms_top_n,
        nms_threshold=cfg.postprocess.nms_threshold, max_detections=cfg.postprocess.max_detections,
        opset=opset, adapter=adapter)
    with tempfile.TemporaryDirectory(prefix="glip-export-") as scratch:
        traced = Path(scratch) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it records
            torch.onnx.export(graph, example, str(traced), input_names=list(INPUT_NAMES),
                              output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=False,
                              dynamic_axes=dynamic, do_constant_folding=True)
        proto = onnx.load(str(traced))
        for key, value in metadata.to_props().items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name, proto.producer_version = "glipcli", __version__
        onnx.checker.check_model(proto, full_check=True)
        atomic_write(output, lambda tmp: onnx.save(proto, str(tmp)))
    return metadata
