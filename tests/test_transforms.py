"""Image loading, the official resize rule, BGR-255 normalisation and padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from glipcli.config import InputConfig
from glipcli.data.transforms import batch_images, load_image, preprocess_image, resized_size
from glipcli.errors import GlipError

# ---------------------------------------------------------------- golden


def test_golden_image_tensor(golden_dir: Path) -> None:
    ref = load_file(str(golden_dir / "tiny" / "inputs.safetensors"))
    image = load_image(golden_dir / "tiny" / "image.png")
    assert (image.height, image.width) == tuple(ref["original_size_hw"].tolist())

    tensor, size_hw = preprocess_image(image, InputConfig(min_size=336, max_size=560))
    assert size_hw == tuple(ref["image_size_hw"].tolist()) == (336, 504)
    batch, sizes = batch_images([tensor])
    assert sizes == [(336, 504)]
    expected = ref["image_tensor"]
    assert batch.shape == expected.shape == (1, 3, 352, 512)
    max_diff = (batch - expected).abs().max().item()
    assert max_diff <= 1e-5, f"max abs diff {max_diff}"
    assert torch.equal(batch, expected), f"not bitwise (max abs diff {max_diff})"


# ---------------------------------------------------------------- resize rule


@pytest.mark.parametrize(
    ("w", "h", "min_size", "max_size", "expected"),
    [
        (600, 400, 800, 1333, (1200, 800)),  # landscape, no cap
        (400, 600, 800, 1333, (800, 1200)),  # portrait
        (600, 400, 336, 560, (504, 336)),  # the tiny golden
        (640, 427, 800, 1333, (1199, 800)),  # long side truncated: 1199.06 -> 1199
        (500, 500, 800, 1333, (800, 800)),  # square
        (2000, 500, 800, 1333, (1332, 333)),  # very wide: cap, short = round(333.25)
        (1000, 500, 800, 1333, (1332, 666)),  # cap, round(666.5) = 666 (round half to even)
        (500, 3000, 800, 1333, (222, 1332)),  # very tall: short = round(222.17)
        (1200, 800, 800, 1333, (1200, 800)),  # already the target size: unchanged
        (1200, 800, 800, None, (1200, 800)),
        (4000, 1000, 800, None, (3200, 800)),  # no max_size
    ],
)
def test_resized_size(w, h, min_size, max_size, expected) -> None:
    assert resized_size(w, h, min_size, max_size) == expected


def test_resized_size_short_side_is_min_size_when_not_capped() -> None:
    for w in range(300, 1200, 37):
        for h in range(300, 1200, 41):
            new_w, new_h = resized_size(w, h, 800, 100000)
            assert min(new_w, new_h) == 800
            assert max(new_w, new_h) == int(800 * max(w, h) / min(w, h))


def test_resized_size_never_returns_zero() -> None:
    assert min(resized_size(100000, 1, 800, 1333)) >= 1


@pytest.mark.parametrize(("w", "h", "min_size"), [(0, 10, 800), (10, -1, 800), (10, 10, 0)])
def test_resized_size_rejects_bad_sizes(w, h, min_size) -> None:
    with pytest.raises(GlipError):
        resized_size(w, h, min_size, 1333)


# ---------------------------------------------------------------- preprocess + batch


def test_preprocess_uniform_colour_is_bgr_normalised() -> None:
    cfg = InputConfig(min_size=32, max_size=64)
    rgb = (10, 20, 30)
    tensor, size_hw = preprocess_image(Image.new("RGB", (40, 20), rgb), cfg)
    assert size_hw == (32, 64) and tensor.shape == (3, 32, 64) and tensor.dtype == torch.float32
    for channel, value in enumerate(reversed(rgb)):  # BGR order
        expected = (value - cfg.pixel_mean[channel]) / cfg.pixel_std[channel]
        assert torch.allclose(tensor[channel], torch.full((32, 64), expected), atol=1e-5)


def test_preprocess_keeps_left_right_and_top_bottom() -> None:
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[:32, :, 0] = 255  # top half red
    array[:, 32:, 2] = 255  # right half blue
    tensor, _ = preprocess_image(Image.fromarray(array), InputConfig(min_size=32, max_size=64))
    red, blue = tensor[2], tensor[0]  # BGR
    assert red[:12].min() > red[-12:].max()
    assert blue[:, -12:].min() > blue[:, :12].max()


def test_batch_images_pads_with_zeros() -> None:
    a = torch.randn(3, 30, 50)
    b = torch.randn(3, 40, 20)
    batch, sizes = batch_images([a, b], size_divisible=32)
    assert batch.shape == (2, 3, 64, 64)
    assert sizes == [(30, 50), (40, 20)]
    assert torch.equal(batch[0, :, :30, :50], a) and torch.equal(batch[1, :, :40, :20], b)
    assert batch[0, :, 30:].abs().sum() == 0 and batch[0, :, :, 50:].abs().sum() == 0
    assert batch[1, :, 40:].abs().sum() == 0 and batch[1, :, :, 20:].abs().sum() == 0


def test_batch_images_without_rounding() -> None:
    batch, _ = batch_images([torch.ones(3, 30, 50), torch.ones(3, 33, 20)], size_divisible=0)
    assert batch.shape == (2, 3, 33, 50)


def test_batch_images_already_divisible() -> None:
    batch, _ = batch_images([torch.ones(3, 64, 32)])
    assert batch.shape == (1, 3, 64, 32)


@pytest.mark.parametrize(
    "tensors", [[], [torch.ones(30, 50)], [torch.ones(3, 4, 4), torch.ones(1, 4, 4)]]
)
def test_batch_images_rejects_bad_input(tensors) -> None:
    with pytest.raises(GlipError):
        batch_images(tensors)


# ---------------------------------------------------------------- load_image


def _rgb(path: Path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_load_grayscale(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    pixels = _rgb(tmp_path / "g.png")
    assert pixels.shape == (4, 5, 3) and (pixels == 77).all()


def test_load_rgba_and_la_drop_alpha(tmp_path: Path) -> None:
    Image.new("RGBA", (3, 3), (10, 200, 30, 0)).save(tmp_path / "a.png")
    assert (_rgb(tmp_path / "a.png") == [10, 200, 30]).all()
    Image.new("LA", (3, 3), (99, 5)).save(tmp_path / "la.png")
    assert (_rgb(tmp_path / "la.png") == 99).all()


def test_load_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 2), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png")
    pixels = _rgb(tmp_path / "p.png")
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[1, 3].tolist() == [0, 0, 255]


def test_load_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16).repeat(2, axis=0)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    pixels = _rgb(tmp_path / "d.png")
    assert pixels[0, :, 0].tolist() == [0, 128, 255]


def test_load_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    pixel = _rgb(tmp_path / "c.jpg")[4, 4].astype(int)
    assert pixel[0] > 200 and pixel[1] < 50 and pixel[2] < 50  # red


def test_load_applies_exif_orientation(tmp_path: Path) -> None:
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red
    array[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(array).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)

    pixels = _rgb(tmp_path / "r.jpg").astype(int)
    assert pixels.shape == (40, 20, 3)  # width and height swapped
    top, bottom = pixels[5, 10], pixels[35, 10]
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GlipError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(GlipError, match="not a readable image"):
        load_image(tmp_path)


def test_load_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(GlipError, match="empty.png: not a readable image"):
        load_image(tmp_path / "empty.png")


def test_load_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(GlipError, match="not a readable image"):
        load_image(tmp_path / "junk.jpg")


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_load_truncated_file(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    full = tmp_path / f"full.{suffix}"
    Image.fromarray(noise).save(full)
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert load_image(full).size == (64, 64)
    with pytest.raises(GlipError, match="not a readable image"):
        load_image(cut)
