"""Prompt reuse: N images with one 80-class prompt, with and without reusing the text features.

The predictor encodes each distinct prompt once and reuses it; "without" clears that cache
before every image, as a pipeline that re-encodes the caption per image would.

    python benchmarks/prompt_cache.py                       # GLIP-T, 50 images, official size
    python benchmarks/prompt_cache.py --images 10 --min-size 480   # a quicker run
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import COCO_CLASSES, machine_description, peak_rss_gib, test_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="glip-t")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from glipcli.config import get_preset
    from glipcli.modeling.glip import GLIP
    from glipcli.predictor import GLIPPredictor

    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    cfg = cfg.replace(input=dataclasses.replace(cfg.input, min_size=args.min_size, max_size=args.max_size))
    predictor = GLIPPredictor(GLIP(cfg), device=args.device)
    calls = {"n": 0}
    encode = predictor.model.encode_text

    def counting_encode(*a, **k):
        calls["n"] += 1
        return encode(*a, **k)

    predictor.model.encode_text = counting_encode
    prompt = predictor.encode_classes(COCO_CLASSES)
    images = [test_image()] * args.images
    predictor.predict(images[:1], prompt)  # warm-up

    timings = {}
    for reuse in (True, False):
        predictor._text_cache.clear()
        calls["n"] = 0
        start = time.perf_counter()
        for image in images:
            if not reuse:
                predictor._text_cache.clear()
            predictor.predict([image], prompt)
        timings[reuse] = (time.perf_counter() - start, calls["n"])

    print(f"machine: {machine_description()}; {args.preset}, {args.images} images, 80-class prompt "
          f"({prompt.num_tokens} tokens), input {args.min_size}/{args.max_size}")
    for reuse, (seconds, n) in timings.items():
        print(f"  {'with' if reuse else 'without'} text reuse: {seconds:.2f} s total, "
              f"{seconds / args.images:.3f} s/image, text encoder ran {n} times")
    print(f"  ratio with/without: {timings[True][0] / timings[False][0]:.3f}; peak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
