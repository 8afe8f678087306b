"""Bad-input matrix, images: every odd or broken image file through `glip detect`.

Rows already covered elsewhere (not repeated here): a missing file and a file that is not an
image, each in a fresh process (tests/test_cli.py); a folder with a broken and an empty file among
good ones, and `--strict` stopping at the first (tests/test_batch_outputs.py); the pixel values
that grayscale, RGBA/LA, palette-with-transparency, 16-bit and CMYK files decode to, and EXIF
orientation 6 (tests/test_transforms.py).

Here: each odd-but-valid kind goes through the command (one run over a folder of all of them,
checked row by row: size reported in the displayed frame, boxes inside it, a rendering written),
each broken kind is one error line naming the file, a 300-megapixel image is refused from its
header without decoding it, and random damage to image bytes only ever gives GlipError.
"""

from __future__ import annotations

import io
import json
import random
import resource
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from glipcli.data.transforms import load_image
from glipcli.errors import GlipError
from reliability_utils import (assert_one_line_error, exif_block, glip, golden_args, orientation_exif, png_bytes,
                               write_small_input_golden)

W, H = 40, 30  # the stored size of the test photos


def _photo(mode: str = "RGB") -> Image.Image:
    """Something to detect in: two coloured blocks on grey."""
    array = np.full((H, W, 3), 128, np.uint8)
    array[4:20, 3:18] = (220, 30, 30)
    array[10:28, 22:37] = (30, 60, 220)
    image = Image.fromarray(array)
    return image if mode == "RGB" else image.convert(mode)


def _rgb16_png() -> bytes:
    """8x6 16-bit RGB (PIL reads it, but cannot write it)."""
    row = b"\x00" + b"\xc0\x00\x40\x00\x20\x00" * 8
    return png_bytes(8, 6, 16, 2, rows=row * 6)


# name -> (how to write it, its displayed size (w, h))
ODD_IMAGES = {
    "gray.png": (lambda p: _photo("L").save(p), (W, H)),
    "rgba.png": (lambda p: _photo("RGBA").save(p), (W, H)),
    "palette.png": (lambda p: _photo().convert("P", palette=Image.Palette.ADAPTIVE).save(p), (W, H)),
    "palette_transparent.gif": (lambda p: _photo().convert("P").save(p, transparency=0), (W, H)),
    "palette_alpha.tiff": (lambda p: _photo("RGBA").convert("PA").save(p), (W, H)),
    "cmyk.jpg": (lambda p: _photo("CMYK").save(p), (W, H)),
    "gray16.png": (lambda p: Image.fromarray(np.full((H, W), 40000, np.uint16)).save(p), (W, H)),
    "rgb16.png": (lambda p: p.write_bytes(_rgb16_png()), (8, 6)),
    "one_pixel.png": (lambda p: Image.new("RGB", (1, 1), (200, 10, 10)).save(p), (1, 1)),
    "exif_orientation_0.jpg": (lambda p: _photo().save(p, exif=orientation_exif(0)), (W, H)),
    "exif_orientation_9.jpg": (lambda p: _photo().save(p, exif=orientation_exif(9)), (W, H)),
    "exif_orientation_255.jpg": (lambda p: _photo().save(p, exif=orientation_exif(255)), (W, H)),
    "exif_orientation_6.jpg": (lambda p: _photo().save(p, exif=orientation_exif(6)), (H, W)),
    # a tag of the wrong type next to a valid orientation: PIL's own exif_transpose raises
    # struct.error on it; glip reads the orientation and ignores the rest
    "exif_wrong_tag_type.jpg": (lambda p: _photo().save(p, exif=exif_block(
        [(0x010A, 2, 4, b"cam\x00"), (0x0112, 3, 1, struct.pack(">H", 6))])), (H, W)),
    # an EXIF block cut short (PIL warns "Corrupt EXIF data"): ignored
    "exif_truncated.jpg": (lambda p: _photo().save(p, exif=orientation_exif(6)[:20]), (W, H)),
}


@pytest.fixture(scope="module")
def odd_run(golden_dir, tmp_path_factory):
    """One `glip detect` over a folder of every odd-but-valid kind, with --json and --save-vis."""
    root = tmp_path_factory.mktemp("odd")
    folder = root / "images"
    folder.mkdir()
    for name, (write, _) in ODD_IMAGES.items():
        write(folder / name)
    from glipcli.cli.main import main

    # the golden tiny model with 96-128 px inputs: 15 images in a few seconds
    weights = write_small_input_golden(golden_dir, root / "small_golden.safetensors")
    out, vis = root / "out.json", root / "vis"
    code = main(["detect", str(folder), "--weights", str(weights), "-p", "red block. blue block",
                 "--box-threshold", "0", "--batch-size", "4", "--json", str(out), "--save-vis", str(vis), "-q"])
    results = {Path(r["image"]).name: r for r in json.loads(out.read_text())} if out.exists() else {}
    return code, results, vis


def test_odd_images_all_succeed(odd_run):
    code, results, _ = odd_run
    assert code == 0
    assert sorted(results) == sorted(ODD_IMAGES)


@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_odd_image_is_read_as_displayed(odd_run, name):
    _, results, vis = odd_run
    result = results[name]
    expected = ODD_IMAGES[name][1]
    assert (result["width"], result["height"]) == expected
    assert result["detections"], "the tiny model scores every image"
    for det in result["detections"]:
        x0, y0, x1, y1 = det["box_xyxy"]
        assert 0 <= x0 <= x1 <= expected[0] and 0 <= y0 <= y1 <= expected[1], det
    renderings = [p for p in vis.iterdir() if p.stem == Path(name).stem]
    assert len(renderings) == 1
    with Image.open(renderings[0]) as rendering:
        assert rendering.size == expected


def test_invalid_orientation_values_leave_pixels_as_stored(tmp_path):
    """Orientation 0, 9 and 255 are not orientations: the image is used as stored (no rotation,
    no mirroring), exactly like an image without EXIF."""
    plain = tmp_path / "plain.png"
    _photo().save(plain)
    for value in (0, 9, 255):
        path = tmp_path / f"o{value}.png"
        _photo().save(path, exif=orientation_exif(value))
        assert np.array_equal(np.asarray(load_image(path)), np.asarray(load_image(plain))), value


def test_broken_exif_that_crashes_pil_is_still_rotated(tmp_path):
    path = tmp_path / "broken.jpg"
    ODD_IMAGES["exif_wrong_tag_type.jpg"][0](path)
    with Image.open(path) as opened, pytest.raises(struct.error):
        ImageOps.exif_transpose(opened)  # what glip no longer calls
    image = load_image(path)
    assert image.size == (H, W)
    # orientation 6: the stored left edge is shown at the top (the red block moves up-right)
    array = np.asarray(image).astype(int)
    assert array[5, 18, 0] > 150 and array[5, 18, 2] < 100, array[5, 18]


# -- broken files ----------------------------------------------------------------------------------
def _truncated_jpeg(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) * 2 // 3])  # cut inside the entropy-coded scan


BROKEN = {
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file, 0 bytes"),
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "header_only.png": (lambda p: p.write_bytes(png_bytes(64, 48, 8, 2)[:33]), "not a readable image"),
    "notes.png": (lambda p: p.write_text("shopping list: eggs"), "not an image format glip can read"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_image_is_one_error_line(golden_dir, tmp_path, capsys, name):
    write, needle = BROKEN[name]
    path = tmp_path / name
    write(path)
    out = tmp_path / "out.json"
    code, _, err = glip(capsys, "detect", path, *golden_args(golden_dir), "-p", "dog", "--json", out)
    assert_one_line_error(code, err, str(path), needle)
    assert not out.exists()


# -- very large images -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """A valid 20000 x 15000 PNG (300 megapixels; 1-bit, so the file is ~40 kB)."""
    path = tmp_path_factory.mktemp("huge") / "panorama.png"
    path.write_bytes(png_bytes(20000, 15000, 1, 0))
    return path


def test_huge_image_is_refused_from_its_header(golden_dir, huge_png, capsys):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = glip(capsys, "detect", huge_png, *golden_args(golden_dir), "-p", "dog")
    line = assert_one_line_error(code, err, str(huge_png), "too large", "300 megapixels", "at most 179 megapixels",
                                 "downscale")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 400, f"peak memory grew by {grown_mb:.0f} MB: the pixels were decoded ({line})"


def test_huge_image_among_good_ones_is_reported_and_the_rest_processed(golden_dir, huge_png, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "b_panorama.png").write_bytes(huge_png.read_bytes())
    _truncated_jpeg(folder / "c_cut.jpg")
    for name in ("a_first.png", "d_last.jpg"):
        _photo().save(folder / name)
    out = tmp_path / "out.json"
    code, _, err = glip(capsys, "detect", folder, *golden_args(golden_dir), "-p", "dog", "--json", out,
                        "--batch-size", "2", "-q")
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert "b_panorama.png: image too large" in lines[0] and "c_cut.jpg: not a readable image" in lines[1]
    assert "2 of 4 images could not be read" in lines[2]
    assert [Path(r["image"]).name for r in json.loads(out.read_text())] == ["a_first.png", "d_last.jpg"]


def test_huge_image_in_a_training_set_is_refused_from_its_header(huge_png, tmp_path):
    from glipcli.data.coco import load_coco

    (tmp_path / "panorama.png").write_bytes(huge_png.read_bytes())
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "panorama.png", "width": 20000, "height": 15000}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}],
                               "categories": [{"id": 1, "name": "dog"}]}))
    with pytest.raises(GlipError, match="panorama.png: image too large to decode safely"):
        load_coco(ann)


# -- fuzz: damaged bytes ---------------------------------------------------------------------------
def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = _photo("P") if fmt == "GIF" else _photo()
    image.save(buffer, fmt, **({"exif": orientation_exif(6)} if fmt == "JPEG" else {}))
    return buffer.getvalue()


_SAMPLES = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's notes on the damaged EXIF blocks
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(sorted(_SAMPLES)), seed=st.integers(0, 2**32 - 1), flips=st.integers(0, 12),
       cut=st.floats(0.0, 1.0))
def test_damaged_image_bytes_only_ever_give_glip_errors(tmp_path, fmt, seed, flips, cut):
    rng = random.Random(seed)
    data = bytearray(_SAMPLES[fmt])
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    if cut < 0.5:
        data = data[: int(len(data) * cut * 2)]
    path = tmp_path / f"damaged.{fmt.lower()}"
    path.write_bytes(bytes(data))
    try:
        image = load_image(path)
    except GlipError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


def test_folder_of_only_bad_images_writes_nothing(golden_dir, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("empty.jpg", "notes.png"):
        BROKEN[name][0](folder / name)
    out = tmp_path / "out.json"
    code, _, err = glip(capsys, "detect", folder, *golden_args(golden_dir), "-p", "dog", "--json", out)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert [("empty.jpg" in lines[0]), ("notes.png" in lines[1])] == [True, True]
    assert lines[2] == "error: none of the 2 images could be read (listed above); nothing was written"
    assert not out.exists()
