"""One image with LVIS's 1203 class names: the prompt is split into chunks that fit the 256-token
budget, each chunk's text is encoded once, and the image backbone runs once for all chunks.

The baseline, measured in the same run, is the naive loop that runs the whole model per chunk.

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
    args = parser.parse_args()
    if not args.names.is_file():
        sys.exit(f"error: {args.names}: no such file (pass --names with the LVIS class names)")

    import torch

    from glipcli.chunked_detection import detect_with_spec
    from glipcli.config import get_preset
    from glipcli.data.transforms import batch_images, preprocess_image
    from glipcli.modeling.glip import GLIP
    from glipcli.predictor import GLIPPredictor
    from glipcli.prompts.chunking import plan_chunks
    from glipcli.prompts.prompt_file import PromptSpec

    names = [line.strip() for line in args.names.read_text().splitlines() if line.strip()]
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    cfg = cfg.replace(input=dataclasses.replace(cfg.input, min_size=args.min_size, max_size=args.max_size))
    predictor = GLIPPredictor(GLIP(cfg), device=args.device)
    spec = PromptSpec.from_names(names)
    plan = plan_chunks(spec, max_tokens=cfg.language.max_query_len)
    image = test_image()

    start = time.perf_counter()
    results = detect_with_spec(predictor, [image], spec)
    first = time.perf_counter() - start  # includes encoding each chunk's text (once per chunk)

    tensor, size = preprocess_image(image, cfg.input)
    batch, sizes = batch_images([tensor], cfg.input.size_divisible)

    def naive_loop():
        for chunk in plan.chunks:
            predictor.detect_tensor(batch, sizes, chunk.prompt)  # whole model per chunk (text cached)

    naive_loop()  # warm-up: both ways have run once before anything is timed
    times: dict[str, list[float]] = {"ours": [], "naive": []}
    for _ in range(args.runs):  # interleaved, so drifting clocks or caches favour neither
        for name, fn in (("ours", lambda: detect_with_spec(predictor, [image], spec)), ("naive", naive_loop)):
            start = time.perf_counter()
            fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    ours, naive = statistics.median(times["ours"]), statistics.median(times["naive"])

    print(f"machine: {machine_description()}; {args.preset}, {len(names)} classes in {len(plan.chunks)} chunks, "
          f"input {args.min_size}/{args.max_size}")
    print(f"  first image (encodes the {len(plan.chunks)} chunk texts): {first:.2f} s")
    print(f"  backbone once + head per chunk: {ours:.2f} s, median of {args.runs} "
          f"({len(results[0].detections)} detections)")
    print(f"  whole model per chunk (baseline): {naive:.2f} s, median of {args.runs}")
    print(f"  ratio: {ours / naive:.2f}; peak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
