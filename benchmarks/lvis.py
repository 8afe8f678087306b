"""One image with LVIS's 1203 class names: the prompt is split into chunks that fit the 256-token
budget, each chunk's text is encoded once, the image backbone runs once for all chunks, and the
head reads the chunks in batches (`--prompt-batch`, default: the predictor's choice for the device).

Measured in the same run, interleaved after a warm-up of each: the chunks one after another
(backbone once, one chunk per head call) and the naive loop that runs the whole model per chunk.
The batched and the one-after-another detections are compared (labels, scores, boxes).

    python benchmarks/lvis.py --names ../shared/data/lvis_v1_class_names.txt
    python benchmarks/lvis.py --names NAMES.txt --min-size 480 --max-size 800   # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, peak_rss_gib, test_image  # noqa: E402

DEFAULT_NAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "lvis_v1_class_names.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=Path, default=DEFAULT_NAMES, help="one class name per line")
    parser.add_argument("--preset", default="glip-t")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each way (median)")
    parser.add_argument("--prompt-batch", type=int, default=None, help="chunks per head call (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    if not args.names.is_file():
        sys.exit(f"error: {args.names}: no such file (pass --names with the LVIS class names)")

    import torch

    from glipcli.chunked_detection import detect_with_spec
    from glipcli.config import get_preset
    from glipcli.data.transforms import batch_images, preprocess_image
    from glipcli.modeling.glip import GLIP
    from glipcli.predictor import GLIPPredictor, _default_prompt_batch
    from glipcli.prompts.chunking import plan_chunks
    from glipcli.prompts.prompt_file import PromptSpec

    names = [line.strip() for line in args.names.read_text().splitlines() if line.strip()]
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    cfg = cfg.replace(input=dataclasses.replace(cfg.input, min_size=args.min_size, max_size=args.max_size))
    model = GLIP(cfg)
    predictor = GLIPPredictor(model, device=args.device, dtype=args.dtype, prompt_batch_size=args.prompt_batch)
    sequential = GLIPPredictor(model, device=args.device, dtype=args.dtype, prompt_batch_size=1)
    sequential._text_cache = predictor._text_cache  # the same model: share the encoded chunk texts
    spec = PromptSpec.from_names(names)
    plan = plan_chunks(spec, max_tokens=cfg.language.max_query_len)
    image = test_image()

    start = time.perf_counter()
    results = detect_with_spec(predictor, [image], plan)
    first = time.perf_counter() - start  # includes encoding each chunk's text (once per chunk)
    one_by_one = detect_with_spec(sequential, [image], plan)
    same, worst_score, worst_box = _compare(results[0], one_by_one[0])

    tensor, size = preprocess_image(image, cfg.input)
    batch, sizes = batch_images([tensor], cfg.input.size_divisible)

    def naive_loop():
        for chunk in plan.chunks:
            sequential.detect_tensor(batch, sizes, chunk.prompt)  # whole model per chunk (text cached)

    naive_loop()  # warm-up: every way has run once before anything is timed
    ways = {"batched": lambda: detect_with_spec(predictor, [image], plan),
            "sequential": lambda: detect_with_spec(sequential, [image], plan), "naive": naive_loop}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.runs):  # interleaved, so drifting clocks or caches favour none
        for name, fn in ways.items():
            start = time.perf_counter()
            fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    group = predictor.prompt_batch_size or _default_prompt_batch(predictor.device, 1)

    print(f"machine: {machine_description()}; {args.preset} {args.dtype}, {len(names)} classes in "
          f"{len(plan.chunks)} chunks, input {args.min_size}/{args.max_size}")
    print(f"  first image (encodes the {len(plan.chunks)} chunk texts): {first:.2f} s")
    print(f"  backbone once, {group} chunks per head call: {med['batched']:.2f} s, median of {args.runs} "
          f"({len(results[0].detections)} detections)")
    print(f"  backbone once, one chunk after another: {med['sequential']:.2f} s")
    print(f"  whole model per chunk: {med['naive']:.2f} s")
    print(f"  batched vs one after another: the same {len(one_by_one[0].detections)} detections: {same} "
          f"(largest score difference {worst_score:.1e}, box {worst_box:.1e} px)")
    print(f"  ratio batched / one after another: {med['batched'] / med['sequential']:.2f} "
          f"({med['sequential'] / med['batched']:.2f}x faster); batched / whole model per chunk: "
          f"{med['batched'] / med['naive']:.2f} ({med['naive'] / med['batched']:.2f}x faster)")
    gpu = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 1024**3:.2f} GiB"
           if args.device.startswith("cuda") else "")
    print(f"  peak RSS {peak_rss_gib():.2f} GiB{gpu}")


def _compare(a, b) -> tuple[bool, float, float]:
    """Same labels in the same order; the largest score and box-coordinate differences."""
    labels = [(d.label, d.phrase_index) for d in a.detections] == [(d.label, d.phrase_index) for d in b.detections]
    score = max((abs(x.score - y.score) for x, y in zip(a.detections, b.detections)), default=0.0)
    box = max((abs(u - v) for x, y in zip(a.detections, b.detections) for u, v in zip(x.box_xyxy, y.box_xyxy)),
              default=0.0)
    return labels and score < 1e-4 and box < 1e-2, score, box


if __name__ == "__main__":
    main()
