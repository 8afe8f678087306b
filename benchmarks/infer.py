"""Inference latency and peak memory: GLIP-T (this package) vs Grounding DINO-T (transformers).

Both models get seeded random weights (no download), the same 600x400 picture resized to
800x1200 by each model's own preprocessing, and the same class list. Each case runs in a fresh
process; the table gives the median over --runs runs after one warm-up, the peak RSS of that
process, and the ratio ours / Grounding DINO-T for the same prompt and batch size.

    python benchmarks/infer.py                     # CPU, float32, all cases
    python benchmarks/infer.py --cases glip-short-1,gdino-short-1 --runs 5
    python benchmarks/infer.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (COCO_CLASSES, SHORT_CLASSES, gdino_step, grounding_dino, machine_description, measure,  # noqa: E402
                    run_worker, test_image)

PROMPTS = {"short": SHORT_CLASSES, "coco80": COCO_CLASSES}
# Issue 16's CPU goals, for the 6-class batch-1 case: the float32 peak RSS, and the bfloat16 time
# as a fraction of Grounding DINO-T's float32 time.
GOAL_CASE = "glip-short-1"
FLOAT32_PEAK_RSS_GOAL_GIB = 1.7
BFLOAT16_RATIO_GOAL = 0.3
ALL_CASES = [f"{model}-{prompt}-{batch}" for prompt in PROMPTS for batch in (1, 4) for model in ("gdino", "glip")]


def _glip_fn(classes, batch, device, dtype):
    import torch

    from glipcli.config import get_preset
    from glipcli.modeling.glip import GLIP
    from glipcli.predictor import GLIPPredictor

    torch.manual_seed(0)
    # a reduced dtype as `glip detect --dtype` runs it: weights cast once on the CPU, autocast on GPUs
    predictor = GLIPPredictor(GLIP(get_preset("glip-t")), device=device, dtype=dtype)
    images = [test_image()] * batch

    def run():
        predictor._text_cache.clear()  # count the text encoder in every run, as for the baseline
        with torch.inference_mode():
            predictor.predict(images, classes, batch_size=batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return run


def _gdino_fn(classes, batch, device, dtype):
    return gdino_step(*grounding_dino(device), classes, batch, device, dtype)


def worker(args) -> None:
    model, prompt, batch = args.case.split("-")
    make = _glip_fn if model == "glip" else _gdino_fn
    result = measure(make(PROMPTS[prompt], int(batch), args.device, args.dtype), runs=args.runs)
    result.update(case=args.case, device=args.device, dtype=args.dtype)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(ALL_CASES), help="comma list of MODEL-PROMPT-BATCH")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--baseline-dtype", default="float32", help="dtype of the Grounding DINO runs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    print(f"machine: {machine_description()}; device {args.device}; GLIP dtype {args.dtype}, "
          f"Grounding DINO dtype {args.baseline_dtype}; median of {args.runs} runs after a warm-up")
    results = {}
    for case in args.cases.split(","):
        dtype = args.dtype if case.startswith("glip") else args.baseline_dtype
        results[case] = run_worker(Path(__file__), ["--case", case, "--runs", str(args.runs),
                                                    "--device", args.device, "--dtype", dtype])
        r = results[case]
        gpu = f"   peak GPU memory {r['peak_gpu_gib']:5.2f} GiB" if "peak_gpu_gib" in r else ""
        print(f"  {case:18s} {r['median_s']:8.3f} s   peak RSS {r['peak_rss_gib']:5.2f} GiB{gpu}", flush=True)
    print("\n| case | GLIP-T s | Grounding DINO-T s | ratio | GLIP-T peak RSS GiB | GDINO peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for case, r in results.items():
        if not case.startswith("glip"):
            continue
        base = results.get("gdino" + case[len("glip"):])
        if base is None:
            print(f"| {case[5:]} | {r['median_s']:.3f} | - | - | {r['peak_rss_gib']:.2f} | - |")
        else:
            print(f"| {case[5:]} | {r['median_s']:.3f} | {base['median_s']:.3f} | "
                  f"{r['median_s'] / base['median_s']:.2f} | {r['peak_rss_gib']:.2f} | {base['peak_rss_gib']:.2f} |")
    print_goals(results, args)


def print_goals(results: dict, args) -> None:
    """Issue 16's CPU goals for the 6-class batch-1 case, where this run measured them."""
    glip, gdino = results.get(GOAL_CASE), results.get("gdino" + GOAL_CASE[len("glip"):])
    if glip is None or args.device != "cpu":
        return
    print()
    if args.dtype == "float32":
        rss = glip["peak_rss_gib"]
        print(f"float32 peak RSS ({GOAL_CASE}): {rss:.2f} GiB (goal <= {FLOAT32_PEAK_RSS_GOAL_GIB} GiB: "
              f"{'met' if rss <= FLOAT32_PEAK_RSS_GOAL_GIB else 'NOT met'})")
    if args.dtype == "bfloat16" and gdino is not None and args.baseline_dtype == "float32":
        ratio = glip["median_s"] / gdino["median_s"]
        print(f"bfloat16 / Grounding DINO-T float32 time ({GOAL_CASE}): {ratio:.2f} (goal <= {BFLOAT16_RATIO_GOAL}: "
              f"{'met' if ratio <= BFLOAT16_RATIO_GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
