"""GPU latency of GLIP-T, eager and compiled, against Grounding DINO-T (transformers), in one process.

Both models get seeded random weights (no download), the same 600x400 picture resized to
800x1200 by each model's own preprocessing and the same class list; each time includes the
preprocessing on the CPU. For every (prompt, batch, dtype) the ways are timed interleaved
(A, B, C, A, B, C, ...) after their warm-up, so a drifting clock favours none; the table gives
medians and the ratios GLIP-T / Grounding DINO-T. The compiled path's first call (compiling and
capturing its bucket) is reported separately, as are its next two (CUDA graphs are recorded on
the second call).

    python benchmarks/gpu_latency.py                                   # the default suite
    python benchmarks/gpu_latency.py --cases short-1,short-8 --dtypes float32 --runs 20
    python benchmarks/gpu_latency.py --device cpu --preset nano --runs 1 --cases short-1   # a dry run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import COCO_CLASSES, SHORT_CLASSES, machine_description, test_image  # noqa: E402

PROMPTS = {"short": SHORT_CLASSES, "coco80": COCO_CLASSES}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(device: str, dtype: str):
    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


def glip_way(predictor, classes: list[str], batch: int):
    import torch

    images = [test_image()] * batch

    def run():
        with torch.inference_mode():
            predictor.predict(images, classes, batch_size=batch)

    return run


def gdino_way(model, processor, tokenizer, classes: list[str], batch: int, device: str, dtype: str):
    import torch

    caption = ". ".join(classes) + "."
    images = [test_image()] * batch

    def run():
        with torch.inference_mode(), _autocast(device, dtype):
            pixels = processor(images=images, return_tensors="pt")
            text = tokenizer([caption] * batch, padding=True, return_tensors="pt")
            out = model(pixel_values=pixels["pixel_values"].to(device), pixel_mask=pixels["pixel_mask"].to(device),
                        input_ids=text["input_ids"].to(device), attention_mask=text["attention_mask"].to(device),
                        token_type_ids=text["token_type_ids"].to(device))
            scores = out.logits.sigmoid().amax(-1)
            _ = out.pred_boxes[scores > 0.3]

    return run


def timed(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(ways: dict, runs: int, device: str) -> dict[str, float]:
    """Median seconds of each way: a warm-up each, then A, B, C, A, B, C, ..."""
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
    parser.add_argument("--compile-mode", default="reduce-overhead",
                        help="torch.compile mode of the compiled way ('none' to skip it)")
    parser.add_argument("--no-gdino", action="store_true", help="skip Grounding DINO-T")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch

    from glipcli.config import get_preset
    from glipcli.modeling.glip import GLIP
    from glipcli.predictor import GLIPPredictor

    print(f"machine: {machine_description()}; {args.preset}; median of {args.runs} interleaved runs after "
          "the warm-up; times include the CPU preprocessing", flush=True)
    torch.manual_seed(0)
    model = GLIP(get_preset(args.preset))
    gdino = None
    if not args.no_gdino:
        from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor

        from glipcli.prompts.tokenizer import load_tokenizer

        torch.manual_seed(0)
        gdino = (GroundingDinoForObjectDetection(GroundingDinoConfig()).eval().to(args.device),
                 GroundingDinoImageProcessor(), load_tokenizer())

    rows = []
    for dtype in args.dtypes.split(","):
        eager = GLIPPredictor(model, device=args.device, dtype=dtype)
        compiled = None
        if args.compile_mode != "none":
            compiled = GLIPPredictor(model, device=args.device, dtype=dtype, compile=args.compile_mode)
            compiled._text_cache = eager._text_cache
        for case in args.cases.split(","):
            prompt, batch = case.split("-")
            classes, batch = PROMPTS[prompt], int(batch)
            ways = {"glip": glip_way(eager, classes, batch)}
            if gdino is not None:
                ways["gdino"] = gdino_way(*gdino, classes, batch, args.device, dtype)
            row = {"case": case, "dtype": dtype, "batch": batch}
            # eager vs Grounding DINO-T first, so that a compile that fails or runs out of time
            # still leaves them measured
            row.update(interleaved(ways, args.runs, args.device))
            print(json.dumps(row), flush=True)
            if compiled is not None:
                fast = glip_way(compiled, classes, batch)
                try:
                    row["compile_first_call_s"] = timed(fast, args.device)
                    row["compiled_next_calls_s"] = [timed(fast, args.device) for _ in range(2)]
                    ways["glip_compiled"] = fast
                    row.update({f"{k}_again" if k in ("glip_s", "gdino_s") else k: v
                                for k, v in interleaved(ways, args.runs, args.device).items()})
                except Exception as error:  # report and go on with the other cases
                    print(f"  compiled way failed for {case} {dtype}: {type(error).__name__}: {error}", flush=True)
                print(json.dumps(row), flush=True)
            rows.append(row)

    print("\n| case | dtype | GLIP-T eager s | GLIP-T compiled s | Grounding DINO-T s | eager / GDINO | "
          "compiled / GDINO | compiled images/s / GDINO images/s | first compiled call s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        # the compiled way against the eager and Grounding DINO-T times of its own interleaved round
        fast_s = r.get("glip_compiled_s")
        eager_s = r.get("glip_s_again", r.get("glip_s")) if fast_s else r.get("glip_s")
        base_s = r.get("gdino_s_again", r.get("gdino_s")) if fast_s else r.get("gdino_s")

        def fmt(value, digits=3):
            return "-" if value is None else f"{value:.{digits}f}"

        ratio = (lambda a: None if a is None or base_s is None else a / base_s)
        speed = None if fast_s is None or base_s is None else base_s / fast_s
        print(f"| {r['case']} | {r['dtype']} | {fmt(eager_s)} | {fmt(fast_s)} | {fmt(base_s)} | "
              f"{fmt(ratio(eager_s), 2)} | {fmt(ratio(fast_s), 2)} | {fmt(speed, 2)} | "
              f"{fmt(r.get('compile_first_call_s'), 1)} |")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory (all ways, one process): {torch.cuda.max_memory_allocated() / 1024**3:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
