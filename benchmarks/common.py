"""Shared pieces of the benchmark scripts: timing, peak memory, a fixed test image, prompts.

Each measured case runs in its own Python process so that its peak RSS is its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

SHORT_CLASSES = ["person", "bicycle", "car", "motorcycle", "traffic light", "dog"]
COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]


def test_image(width: int = 600, height: int = 400):
    """A deterministic 600x400 RGB picture (gradients and shapes), resized to 800x1200 by the
    official test transform, like the photo in the issue's measurements."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height))
    pixels = image.load()
    for y in range(height):
        for x in range(width):
            pixels[x, y] = ((x * 255) // width, (y * 255) // height, ((x + y) * 97) % 256)
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 80, 220, 300), fill=(200, 30, 40))
    draw.rectangle((300, 120, 520, 330), fill=(30, 60, 200))
    return image


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure(fn: Callable[[], object], runs: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    result = {"median_s": statistics.median(times), "times_s": times, "peak_rss_gib": peak_rss_gib()}
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    return result


def run_worker(script: Path, args: list[str], timeout: float = 3600) -> dict:
    """Run `script --worker ...` in a fresh process; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, str(script), "--worker", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_description() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def autocast_context(device: str, dtype: str):
    """torch.autocast for a reduced dtype, nothing for float32."""
    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


def grounding_dino(device: str):
    """Grounding DINO-T (transformers, its default config, seeded random weights: no hub here),
    its image processor and the BERT tokenizer: (model, processor, tokenizer)."""
    import torch
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor

    from glipcli.prompts.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval().to(device)
    return model, GroundingDinoImageProcessor(), load_tokenizer()


def gdino_step(model, processor, tokenizer, classes: list[str], batch: int, device: str, dtype: str
               ) -> Callable[[], None]:
    """One Grounding DINO-T detection of `classes` in `batch` test images (preprocessing, model,
    thresholding at 0.3), GPU-synchronised, as a function to time."""
    import torch

    caption = ". ".join(classes) + "."
    images = [test_image()] * batch

    def run() -> None:
        with torch.inference_mode(), autocast_context(device, dtype):
            pixels = processor(images=images, return_tensors="pt")
            text = tokenizer([caption] * batch, padding=True, return_tensors="pt")
            out = model(pixel_values=pixels["pixel_values"].to(device), pixel_mask=pixels["pixel_mask"].to(device),
                        input_ids=text["input_ids"].to(device), attention_mask=text["attention_mask"].to(device),
                        token_type_ids=text["token_type_ids"].to(device))
            scores = out.logits.sigmoid().amax(-1)
            _ = out.pred_boxes[scores > 0.3]
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return run
