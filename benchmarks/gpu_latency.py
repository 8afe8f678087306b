"""GPU latency of GLIP-T against Grounding DINO-T (transformers), in one process.

Both models get seeded random weights (no download), the same 600x400 picture resized to
800x1200 by each model's own preprocessing and the same class list; each time includes the
preprocessing on the CPU. For every (prompt, batch, dtype) the two are timed interleaved
(A, B, A, B, ...) after their warm-up, so a drifting clock favours neither; the table gives
medians, the ratio GLIP-T / Grounding DINO-T of the times and that of the images per second.

    python benchmarks/gpu_latency.py                                   # the default suite
    python benchmarks/gpu_latency.py --cases short-1,short-8 --dtypes float32 --runs 20
    python benchmarks/gpu_latency.py --device cpu --preset nano --runs 1 --cases short-1   # a dry run
    python benchmarks/gpu_latency.py --cuda-graphs                     # + GLIP-T from CUDA graphs

With --cuda-graphs a third way, GLIP-T replayed from CUDA graphs (`GLIPPredictor(cuda_graphs=True)`,
its own copy of the model, whose deformable convolutions use the capturable grid_sample
formulation), is timed in the same interleaving; its first call, which captures the graphs, is
timed alone before the warm-ups and reported as `graphs_first_call_s`.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (COCO_CLASSES, SHORT_CLASSES, gdino_step, grounding_dino, machine_description,  # noqa: E402
                    test_image)

PROMPTS = {"short": SHORT_CLASSES, "coco80": COCO_CLASSES}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def glip_way(predictor, classes: list[str], batch: int):
    import torch

    images = [test_image()] * batch

    def run():
        with torch.inference_mode():
            predictor.predict(images, classes, batch_size=batch)

    return run


def timed(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(ways: dict, runs: int, device: str) -> dict[str, float]:
    """Median seconds of each way: a warm-up each, then A, B, A, B, ..."""
    for fn in ways.values():
        timed(fn, device)
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(runs):
        for name, fn in ways.items():
            times[name].append(timed(fn, device))
    return {f"{name}_s": statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="glip-t")
    parser.add_argument("--cases", default="short-1,short-8,coco80-1", help="comma list of PROMPT-BATCH")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--no-gdino", action="store_true", help="skip Grounding DINO-T")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cuda-graphs", action="store_true", help="also time GLIP-T replayed from CUDA graphs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch

    from glipcli.config import get_preset
    from glipcli.errors import GlipError
    from glipcli.modeling.glip import GLIP
    from glipcli.predictor import GLIPPredictor

    print(f"machine: {machine_description()}; {args.preset}; median of {args.runs} interleaved runs after "
          "the warm-up; times include the CPU preprocessing", flush=True)
    torch.manual_seed(0)
    model = GLIP(get_preset(args.preset))
    gdino = None
    if not args.no_gdino:
        gdino = grounding_dino(args.device)

    # the graphed way switches its model's deformable convolutions to the capturable formulation
    graph_model = copy.deepcopy(model) if args.cuda_graphs else None
    rows = []
    for dtype in args.dtypes.split(","):
        predictor = GLIPPredictor(model, device=args.device, dtype=dtype)
        graphed = None
        if graph_model is not None:
            try:
                graphed = GLIPPredictor(graph_model, device=args.device, dtype=dtype, cuda_graphs=True)
            except GlipError as error:
                print(f"CUDA graphs skipped: {error}", flush=True)
        for case in args.cases.split(","):
            prompt, batch = case.split("-")
            classes, batch = PROMPTS[prompt], int(batch)
            ways = {"glip": glip_way(predictor, classes, batch)}
            row = {"case": case, "dtype": dtype, "batch": batch}
            if graphed is not None:
                graph_way = glip_way(graphed, classes, batch)
                try:
                    row["graphs_first_call_s"] = timed(graph_way, args.device)
                    ways["graphs"] = graph_way
                except Exception as error:  # reported, the other ways still timed
                    print(f"CUDA graphs failed for {case} {dtype}: {type(error).__name__}: {error}", flush=True)
            if gdino is not None:
                ways["gdino"] = gdino_step(*gdino, classes, batch, args.device, dtype)
            row.update(interleaved(ways, args.runs, args.device))
            print(json.dumps(row), flush=True)
            rows.append(row)

    def fmt(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    name = args.preset.upper()  # glip-t -> GLIP-T
    print(f"\n| case | dtype | {name} s | Grounding DINO-T s | {name} / GDINO | {name} images/s / GDINO images/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        glip_s, base_s = r["glip_s"], r.get("gdino_s")
        ratio = None if base_s is None else glip_s / base_s
        speed = None if base_s is None else base_s / glip_s
        print(f"| {r['case']} | {r['dtype']} | {fmt(glip_s)} | {fmt(base_s)} | {fmt(ratio, 2)} | {fmt(speed, 2)} |")
    if any("graphs_s" in r for r in rows):
        print(f"\n| case | dtype | {name} graphs s | first call (capture) s | graphs / eager | graphs / GDINO | "
              "graphs images/s / GDINO images/s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            if "graphs_s" not in r:
                continue
            graphs_s, base_s = r["graphs_s"], r.get("gdino_s")
            ratio = None if base_s is None else graphs_s / base_s
            speed = None if base_s is None else base_s / graphs_s
            print(f"| {r['case']} | {r['dtype']} | {fmt(graphs_s)} | {fmt(r['graphs_first_call_s'], 2)} | "
                  f"{fmt(graphs_s / r['glip_s'], 2)} | {fmt(ratio, 2)} | {fmt(speed, 2)} |")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory (all ways, one process): {torch.cuda.max_memory_allocated() / 1024**3:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
