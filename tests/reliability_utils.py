"""Helpers for the bad-input matrix (tests/test_reliability_*.py): running the CLI in-process or in
a fresh process, and checking that a failure is one clear line."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from glipcli.cli.main import main


def golden_args(golden_dir: Path) -> list[str]:
    tiny = golden_dir / "tiny"
    return ["--config", str(tiny / "config.yaml"), "--weights", str(tiny / "weights.safetensors")]


def glip(capsys, *args: str) -> tuple[int, str, str]:
    """Run `glip ARGS` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()  # drop what earlier steps printed
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit status 2 and exactly one `error: ...` line on stderr holding every needle."""
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def glip_process(*args: str, timeout: float = 300, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess:
    """Run `glip ARGS` in a fresh Python process, as a user would."""
    return subprocess.run([sys.executable, "-m", "glipcli.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None) -> bytes:
    """A valid PNG written by hand (PIL cannot write 16-bit RGB, and a huge 1-bit image is
    written row by row without ever holding its pixels). rows: the raw scanlines with their filter
    bytes; None: all-zero pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    if rows is None:
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
        row = b"\x00" * (1 + (width * channels * bit_depth + 7) // 8)
        compressor = zlib.compressobj(9)
        data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    else:
        data = zlib.compress(rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def exif_block(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A big-endian EXIF block ("Exif\\0\\0" + TIFF header + one IFD) from raw
    (tag, type, count, value) entries; values of at most 4 bytes are stored inline."""
    ifd = struct.pack(">H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack(">HHI", tag, kind, count) + value.ljust(4, b"\x00")
    return b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + ifd + b"\x00\x00\x00\x00"


def orientation_exif(value: int) -> bytes:
    """An EXIF block holding only the orientation tag (type SHORT) with `value`, valid or not."""
    return exif_block([(0x0112, 3, 1, struct.pack(">H", value))])


def write_tiny_weights(golden_dir: Path, path: Path) -> Path:
    """A small random GLIP (64-96 px inputs, one head layer, seeded) saved with its config, so
    `--weights PATH` alone gives the architecture."""
    import torch

    from glipcli.checkpoint import save_safetensors
    from glipcli.modeling.glip import GLIP
    from training_utils import tiny_config

    torch.manual_seed(0)
    return save_safetensors(GLIP(tiny_config(golden_dir, min_size=64, max_size=96, fusion_dim=256)), path)


def write_small_input_golden(golden_dir: Path, path: Path, min_size: int = 96, max_size: int = 128) -> Path:
    """The golden tiny model's own weights, saved with a config that resizes inputs to
    `min_size` (instead of 336 px): the same detections machinery, several times faster."""
    import dataclasses

    from glipcli.checkpoint import load_checkpoint, save_safetensors
    from glipcli.modeling.glip import GLIP
    from glipcli.yacs_config import config_from_yacs

    cfg = config_from_yacs(golden_dir / "tiny" / "config.yaml")
    model = GLIP(dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, min_size=min_size, max_size=max_size)))
    load_checkpoint(model, golden_dir / "tiny" / "weights.safetensors")
    return save_safetensors(model, path)
