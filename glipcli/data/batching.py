"""Loading images ahead of the model and grouping those of similar size into batches.

Images are decoded and preprocessed by a few threads, one window of `batch_size * WINDOW_BATCHES`
images at a time, the next window loading while the current one runs. Inside a window images are
ordered by padded size before being cut into batches, so a batch pads as little as possible.
Padding does reach the model (Swin windows, convolutions and the fusion attention see the zero
border), so an image batched with larger ones can score slightly differently than alone; with
`batch_size=1` every image is processed exactly as on its own.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from glipcli.config import InputConfig
from glipcli.data.transforms import load_image, preprocess_image
from glipcli.errors import GlipError

ImageInput = str | Path | Image.Image
WINDOW_BATCHES = 8

_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def loader_pool(workers: int) -> ThreadPoolExecutor:
    """The loader threads of this process, kept between calls. A new thread pays for torch's
    per-thread start on its first preprocessing (about 25 ms on 2 cores, 50 ms on 16), which a
    pool made per call would pay on every `predict`. Keyed by process id too: a forked child,
    which inherits the pool object but not its threads, makes its own."""
    key = (os.getpid(), workers)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glip-load")
        return pool


@dataclass
class PreparedImage:
    """One decoded image ready for batching.

    image: the original RGB image; tensor: float32 [3, h, w] preprocessed (unpadded);
    resized_hw: (h, w) of `tensor`; index: position in the input sequence."""

    index: int
    source: str
    image: Image.Image
    tensor: torch.Tensor
    resized_hw: tuple[int, int]


@dataclass
class ImageFailure:
    """An input that could not be read: its position, its name and the one-line reason."""

    index: int
    source: str
    error: str


def source_name(item: ImageInput) -> str:
    """The name an input is reported under: its path, or `<image>` for an in-memory image."""
    return "<image>" if isinstance(item, Image.Image) else str(item)


def prepare_image(index: int, item: ImageInput, input_cfg: InputConfig) -> PreparedImage | ImageFailure:
    """Decode (if a path) and preprocess one input; a GlipError becomes an ImageFailure."""
    name = source_name(item)
    try:
        image = item if isinstance(item, Image.Image) else load_image(item)
        tensor, resized_hw = preprocess_image(image, input_cfg)
    except GlipError as exc:
        return ImageFailure(index, name, str(exc))
    return PreparedImage(index, name, image, tensor, resized_hw)


def group_by_size(items: Sequence[PreparedImage], batch_size: int, size_divisible: int
                  ) -> list[list[PreparedImage]]:
    """Cut `items` into batches of at most `batch_size`, images of equal padded size together
    (ordered by padded (h, w), then input position)."""
    if batch_size < 1:
        raise GlipError(f"batch size must be at least 1 (got {batch_size})")

    def padded(item: PreparedImage) -> tuple[int, int, int]:
        h, w = item.resized_hw
        if size_divisible > 0:
            h, w = (int(math.ceil(v / size_divisible) * size_divisible) for v in (h, w))
        return h, w, item.index

    ordered = sorted(items, key=padded)
    return [list(ordered[i:i + batch_size]) for i in range(0, len(ordered), batch_size)]


def iter_batches(images: Sequence[ImageInput], input_cfg: InputConfig, batch_size: int = 1,
                 workers: int | None = None) -> Iterator[list[PreparedImage] | ImageFailure]:
    """Yield, window by window, each unreadable input (an ImageFailure, first) and then the
    batches of readable ones. Every input appears exactly once."""
    if batch_size < 1:
        raise GlipError(f"batch size must be at least 1 (got {batch_size})")
    count = len(images)
    window = batch_size * WINDOW_BATCHES
    starts = list(range(0, count, window))
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    pool = loader_pool(workers)

    def submit(start: int) -> list[Future]:
        return [pool.submit(prepare_image, i, images[i], input_cfg) for i in range(start, min(start + window, count))]

    current: list[Future] = []
    pending: list[Future] = []
    try:
        pending = submit(starts[0]) if starts else []
        for position in range(len(starts)):
            current = pending
            pending = submit(starts[position + 1]) if position + 1 < len(starts) else []
            loaded = [future.result() for future in current]
            for item in loaded:
                if isinstance(item, ImageFailure):
                    yield item
            ready = [item for item in loaded if isinstance(item, PreparedImage)]
            yield from group_by_size(ready, batch_size, input_cfg.size_divisible)
    finally:  # a closed generator leaves no load running behind it
        unfinished = [f for f in current + pending if not f.cancel()]
        wait_for(unfinished)
