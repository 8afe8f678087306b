"""`glip label` throughput: images/s with 1 and with 2 (or more) processes, measured in the same run.

Each case is launched as `torch.distributed.run --nproc_per_node K` (what `accelerate launch`
does on one machine); every process builds the same seeded model, the prompt is encoded once per
process (the predictor caches its text features; the encoder calls are counted), and the clock
runs from a barrier after loading to the end of `label_images`: labelling, the journals, merging
and writing the COCO dataset. On CPUs the cores are divided among the processes.

    python benchmarks/label.py                                   # GLIP-T (random weights), 480 px, CPU
    python benchmarks/label.py --device cuda --processes 1 --min-size 800 --max-size 1333 --images 256 --batch-size 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import COCO_CLASSES, machine_description, test_image  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int) -> None:
    """`count` distinct 600x400 pictures (the shared test image, shifted)."""
    from PIL import ImageChops

    base = test_image()
    for i in range(count):
        ImageChops.offset(base, 37 * i, 11 * i).save(folder / f"img{i:04d}.png")


def worker(args: argparse.Namespace) -> None:
    import torch

    from glipcli.config import get_preset
    from glipcli.data.sources import expand_image_args
    from glipcli.labeling import LabelConfig, label_images
    from glipcli.modeling.glip import GLIP
    from glipcli.predictor import GLIPPredictor
    from glipcli.prompts.prompt_file import PromptSpec
    from glipcli.sharding import Workers

    workers = Workers.current(args.device)
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    cfg = cfg.replace(input=dataclasses.replace(cfg.input, min_size=args.min_size, max_size=args.max_size))
    predictor = GLIPPredictor(GLIP(cfg), device=workers.device(args.device), dtype=args.dtype)
    encodes = {"n": 0}
    encode = predictor.model.encode_text

    def counting_encode(*a, **k):
        encodes["n"] += 1
        return encode(*a, **k)

    predictor.model.encode_text = counting_encode
    spec = PromptSpec.from_names(COCO_CLASSES[:args.classes])
    config = LabelConfig(output=Path(args.output), batch_size=args.batch_size, box_threshold=0.0, keep_empty=True)
    workers.wait()
    start = time.perf_counter()
    outcome = label_images(predictor, expand_image_args([args.images_dir]), spec, config,
                           model={"preset": args.preset}, workers=workers)
    workers.wait()
    seconds = time.perf_counter() - start
    counts = workers.gather(encodes["n"])
    if workers.is_main:
        print(json.dumps({"seconds": seconds, "images": outcome.summary.images, "text_encodes": counts}))


def run_case(args: argparse.Namespace, processes: int, images_dir: Path, output: Path) -> dict:
    threads = max(1, (os.cpu_count() or 1) // processes) if args.device == "cpu" else 1
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(Path(__file__).resolve()), "--worker", "--images-dir", str(images_dir), "--output", str(output),
               "--preset", args.preset, "--min-size", str(args.min_size), "--max-size", str(args.max_size),
               "--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype,
               "--classes", str(args.classes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(processes=processes, threads_per_process=threads,
                  images_per_s=result["images"] / result["seconds"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="glip-t")
    parser.add_argument("--images", type=int, default=16, help="How many images to label per case.")
    parser.add_argument("--min-size", type=int, default=480)
    parser.add_argument("--max-size", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--classes", type=int, default=6, help="The first N COCO class names as the prompt.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--processes", default="1,2", help="Process counts to compare, the first is the baseline.")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    counts = [int(n) for n in args.processes.split(",")]
    if args.device.startswith("cuda"):
        import torch

        if max(counts) > torch.cuda.device_count():
            parser.error(f"--processes {args.processes}: one GPU per process, and {torch.cuda.device_count()} "
                         "GPU(s) are visible (one GPU: --processes 1)")
    print(f"machine: {machine_description()}")
    print(f"model: {args.preset} (random weights), {args.min_size}/{args.max_size} px, {args.classes} classes, "
          f"batch {args.batch_size}, {args.device} {args.dtype}; {args.images} images of 600x400")
    with tempfile.TemporaryDirectory(prefix="glip-label-bench-") as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        write_images(images, args.images)
        results = [run_case(args, n, images, Path(tmp) / f"out-{n}") for n in counts]
    base = results[0]["images_per_s"]
    for r in results:
        print(f"{r['processes']} process(es) x {r['threads_per_process']} thread(s): {r['images_per_s']:.3f} images/s "
              f"({r['images']} images in {r['seconds']:.1f} s; text encoder calls per process {r['text_encodes']}); "
              f"x{r['images_per_s'] / base:.2f} vs {results[0]['processes']} process(es)")


if __name__ == "__main__":
    main()
