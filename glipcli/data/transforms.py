"""Image loading and the official test-time preprocessing (resize, BGR-255 normalise, pad)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from glipcli.config import InputConfig
from glipcli.errors import GlipError

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float grayscale image to 8-bit and make it RGB.

    PIL's own convert clips such values at 255 (a 16-bit image becomes almost all white).
    Integer images are taken as 16-bit (0..65535) unless all values fit in 0..255;
    float images as 0..1 unless some value exceeds 1.
    """
    array = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        scale = 255.0 if array.size and array.max() <= 1.0 else 1.0
    elif image.mode in _SIXTEEN_BIT_MODES or (array.size and array.max() > 255):
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    gray = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to RGB (alpha is dropped, as the official loader does)."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        # Going through RGBA avoids PIL's palette-transparency warning; same RGB result.
        image = image.convert("RGBA")
    return image.convert("RGB")


EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (the EXIF specification; the same
# table as PIL's ImageOps.exif_transpose). 1 (upright) and any value outside 1..8 change nothing.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1..8), or 1 when it has none, an invalid value (0, 9, 255,
    a string, several values) or an EXIF block PIL cannot parse: such images are shown as stored."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # PIL raises assorted errors (struct, KeyError, ...) on broken EXIF blocks
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value not in _ORIENTATION_TRANSPOSE:
        return 1
    return value


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """The image as displayed: its EXIF orientation applied (see `exif_orientation`). Unlike
    PIL's `ImageOps.exif_transpose`, never rewrites (or chokes on) the EXIF block itself."""
    transpose = _ORIENTATION_TRANSPOSE.get(exif_orientation(image))
    return image if transpose is None else image.transpose(transpose)


def decompression_bomb_message(file: Path, exc: Exception) -> str:
    """PIL's decompression-bomb refusal as a message saying what to do."""
    limit = Image.MAX_IMAGE_PIXELS
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
    bound = f"at most {2 * limit / 1e6:.0f} megapixels" if limit else "a bounded size"
    return (f"{file}: image too large to decode safely ({size}; glip reads images of {bound}, "
            "PIL's decompression-bomb limit); downscale it first")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file fully, apply its EXIF orientation and return it as RGB.

    Every failure is a one-line GlipError naming the file: missing, a folder, empty, not an
    image, truncated or corrupt, or larger than PIL's decompression-bomb limit (2 x
    `PIL.Image.MAX_IMAGE_PIXELS`, about 179 megapixels: refused from the header alone, before any
    pixel is decoded). A broken or invalid EXIF block is ignored (the image is used as stored)."""
    file = Path(path)
    if not file.exists():
        raise GlipError(f"{file}: no such file")
    if file.is_dir():
        raise GlipError(f"{file}: not a readable image (it is a directory)")
    try:
        if file.stat().st_size == 0:
            raise GlipError(f"{file}: not a readable image (empty file, 0 bytes)")
        with Image.open(file) as opened:
            opened.load()  # full decode now, so truncated files fail here
            image = to_rgb(apply_exif_orientation(opened))
            return opened.copy() if image is opened else image  # closing `opened` frees its pixels
    except GlipError:
        raise
    except Exception as exc:  # corrupt data makes PIL's decoders raise many types, not only OSError
        raise GlipError(unreadable_image_message(file, exc)) from None


def unreadable_image_message(file: Path, exc: BaseException) -> str:
    """The one-line message for an image PIL could not open or decode."""
    if isinstance(exc, Image.DecompressionBombError):
        return decompression_bomb_message(file, exc)
    if isinstance(exc, UnidentifiedImageError):
        empty = file.is_file() and file.stat().st_size == 0
        return f"{file}: not a readable image ({'empty file, 0 bytes' if empty else 'not an image format glip can read'})"
    if isinstance(exc, MemoryError):
        return f"{file}: not enough memory to decode this image"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{file}: not a readable image ({reason[:200]})"


def resized_size(
    width: int, height: int, min_size: int, max_size: int | None
) -> tuple[int, int]:
    """Size (new_w, new_h) of the official test-time Resize (maskrcnn_benchmark get_size).

    The short side becomes `min_size`, unless the long side would then exceed `max_size`,
    in which case the short side becomes round(max_size * short / long). The long side is
    truncated (int), not rounded. An image whose short side already has the target length
    is left unchanged.
    """
    if width <= 0 or height <= 0:
        raise GlipError(f"image size must be positive (got {width}x{height})")
    if min_size <= 0:
        raise GlipError(f"min_size must be positive (got {min_size})")
    size = min_size
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return width, height
    # max(1, .) only matters for absurd aspect ratios where the official code would
    # produce a zero-sized image and crash.
    size = max(1, size)
    if width < height:
        return size, max(1, int(size * height / width))
    return max(1, int(size * width / height)), size


def preprocess_image(
    image: Image.Image, input_cfg: InputConfig
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize, convert to BGR 0..255 and normalise one image.

    Returns the float32 tensor [3, h, w] and its size (h, w) after resizing (unpadded).
    """
    image = to_rgb(image)
    new_w, new_h = resized_size(image.width, image.height, input_cfg.min_size, input_cfg.max_size)
    # The official pipeline resizes the PIL image with PIL's bilinear filter (torchvision's
    # resize on a PIL image does exactly this), then ToTensor (/255) and Normalize; the same
    # operations in the same order keep the tensor bitwise equal without importing torchvision.
    resized = image if (new_w, new_h) == image.size else image.resize((new_w, new_h), Image.BILINEAR)
    rgb = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)
    tensor = rgb.to(torch.float32).div(255)[[2, 1, 0]] * 255  # RGB 0..1 -> BGR 0..255
    mean = torch.tensor(input_cfg.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(input_cfg.pixel_std, dtype=torch.float32).view(3, 1, 1)
    tensor = tensor.sub_(mean).div_(std)
    return tensor, (new_h, new_w)


def batch_images(
    tensors: list[torch.Tensor], size_divisible: int = 32
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad images [3, h_i, w_i] at the bottom/right into one batch [B, 3, Hp, Wp].

    Hp, Wp are the largest h, w rounded up to multiples of `size_divisible` (no rounding
    if it is <= 0). Also returns each image's unpadded (h, w).
    """
    if len(tensors) == 0:
        raise GlipError("no images to batch")
    for i, tensor in enumerate(tensors):
        if tensor.dim() != 3:
            shape = tuple(tensor.shape)
            raise GlipError(f"image #{i + 1} must be a [C, H, W] tensor (got shape {shape})")
    channels = {int(t.shape[0]) for t in tensors}
    if len(channels) != 1:
        raise GlipError(f"images have different channel counts: {sorted(channels)}")
    max_h = max(int(t.shape[1]) for t in tensors)
    max_w = max(int(t.shape[2]) for t in tensors)
    if size_divisible > 0:
        max_h = int(math.ceil(max_h / size_divisible) * size_divisible)
        max_w = int(math.ceil(max_w / size_divisible) * size_divisible)
    first = tensors[0]
    batch = first.new_zeros((len(tensors), channels.pop(), max_h, max_w))
    sizes: list[tuple[int, int]] = []
    for slot, tensor in zip(batch, tensors):
        h, w = int(tensor.shape[1]), int(tensor.shape[2])
        slot[:, :h, :w].copy_(tensor)
        sizes.append((h, w))
    return batch, sizes
