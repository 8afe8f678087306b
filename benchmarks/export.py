"""Exported ONNX detector (onnxruntime) vs this package's PyTorch path: latency and peak RSS.

GLIP-T with seeded random weights (no download) and a short class list is exported once (in its
own process); then each case runs in a fresh process on the same 600x400 picture, resized to
800x1200 by the official test transform (GLIP-T's test size), float32, batch 1. Both cases count
preprocessing, the model and post-processing; the prompt's text features are computed before
timing in both (the ONNX file holds them as constants, the predictor caches them). The table
gives the median over --runs runs after one warm-up, each process's peak RSS, and the ratio
onnxruntime / PyTorch measured in the same run (the goal on CPU: <= 0.8).

    python benchmarks/export.py                  # CPU
    python benchmarks/export.py --device cuda    # PyTorch on CUDA vs onnxruntime's CUDA provider
                                                 # (needs the onnxruntime-gpu package)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHORT_CLASSES, machine_description, measure, run_worker, test_image  # noqa: E402


def _predictor(device: str):
    import torch

    from glipcli.config import get_preset
    from glipcli.modeling.glip import GLIP
    from glipcli.predictor import GLIPPredictor

    torch.manual_seed(0)
    return GLIPPredictor(GLIP(get_preset("glip-t")), device=device)


def worker(args) -> None:
    import torch

    if args.case == "export":
        from glipcli.export.onnx_export import export_onnx
        from glipcli.prompts.prompt_file import PromptSpec

        start = time.perf_counter()
        export_onnx(_predictor("cpu"), PromptSpec.from_names(SHORT_CLASSES), args.onnx, overwrite=True)
        from common import peak_rss_gib

        print(json.dumps({"export_s": time.perf_counter() - start, "peak_rss_gib": peak_rss_gib()}))
        return
    image = test_image()
    if args.case == "torch":
        predictor = _predictor(args.device)
        predictor.predict([image], SHORT_CLASSES)  # text features cached, as the ONNX file has them

        def run():
            predictor.predict([image], SHORT_CLASSES)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
    else:
        from glipcli.export.runtime import OnnxDetector

        detector = OnnxDetector.load(args.onnx, device=args.device)

        def run():
            detector.predict([image])
    result = measure(run, args.runs)
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--onnx", default=None, help="reuse this exported file (default: export to a temp folder)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"machine: {machine_description()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    with tempfile.TemporaryDirectory(prefix="glip-bench-export-") as scratch:
        onnx_path = args.onnx or str(Path(scratch) / "glip-t.onnx")
        if args.onnx is None:
            exported = run_worker(Path(__file__), ["--case", "export", "--onnx", onnx_path])
            print(f"export of GLIP-T: {exported['export_s']:.0f} s, peak RSS {exported['peak_rss_gib']:.2f} GiB, "
                  f"file {Path(onnx_path).stat().st_size / 2**20:.0f} MiB")
        common = ["--device", args.device, "--runs", str(args.runs), "--onnx", onnx_path]
        torch_result = run_worker(Path(__file__), ["--case", "torch", *common])
        ort_result = run_worker(Path(__file__), ["--case", "ort", *common])
    print(f"{'case':<24}{'median s':>10}{'peak RSS GiB':>14}")
    for name, result in (("pytorch (glip detect)", torch_result), ("onnxruntime", ort_result)):
        print(f"{name:<24}{result['median_s']:>10.3f}{result['peak_rss_gib']:>14.2f}")
    ratio = ort_result["median_s"] / torch_result["median_s"]
    print(f"ratio onnxruntime / pytorch: {ratio:.2f} (goal <= 0.80)")


if __name__ == "__main__":
    main()
