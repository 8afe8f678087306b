"""Fuzzing every file format glip reads: random mutations of a valid file, fed to its reader.

Each reader must either accept the file or raise GlipError (the CLI prints it as one `error:` line
and exits 2), with a one-line message of bounded length, in bounded time (hypothesis' deadline)
and bounded memory (Python allocations traced per example); never any other exception. The
prompt file goes through the CLI itself (`glip prompt show`), so the exit status is checked too.

The default run tries a few examples per format (derandomized: the same ones every run); the
`slow` variant tries many more, at random.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from glipcli.errors import MAX_MESSAGE_CHARS, GlipError

FAST_EXAMPLES = 12
SLOW_EXAMPLES = int(os.environ.get("GLIP_FUZZ_EXAMPLES", "400"))  # the slow run's budget per format
MAX_PYTHON_MB = 200  # Python memory one reader may hold at its peak while reading a mutated file

MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "repeat", "replace"]),
                               st.integers(0, 1 << 20), st.binary(min_size=1, max_size=12)),
                     min_size=1, max_size=6)
TOKENS = [b"[", b"{", b"&a ", b"*a", b"!!python/object:os.system ", b"- ", b"\n  ", b"NaN", b"1e999", b"null",
          b'"', b"\\u0000", b"\xff\xfe", b"-1", b"99999999999999999999"]


def mutate(data: bytes, mutations, tokens: bool) -> bytes:
    out = bytearray(data)
    for op, position, blob in mutations:
        at = position % (len(out) + 1)
        if tokens and op == "replace":
            blob = TOKENS[blob[0] % len(TOKENS)] * (1 + blob[-1] % 40)
            op = "insert"
        if op == "flip" and out:
            out[at % len(out)] ^= blob[0] or 1
        elif op == "insert":
            out[at:at] = blob
        elif op == "delete":
            del out[at:at + 1 + blob[0] % 64]
        elif op == "repeat":
            out[at:at] = bytes(out[at:at + 1 + blob[0] % 32]) * (1 + blob[-1] % 64)
        elif op == "replace":
            out[at:at + len(blob)] = blob
    return bytes(out)


# -- valid seeds, one per format ----------------------------------------------------------------------
def _safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    return path.read_bytes()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, tuple[bytes, Callable[[Path], object], str]]:
    """format -> (valid file bytes, reader, file name)."""
    from glipcli.bench.suite import load_suite_file
    from glipcli.checkpoint import config_metadata, read_state_dict
    from glipcli.checkpoint import _DERIVED_KEYS
    from glipcli.checkpoint_fit import check_fits, expected_shapes
    from glipcli.coco_results import CocoIndex
    from glipcli.config import get_preset
    from glipcli.data.coco import load_coco
    from glipcli.data.transforms import load_image
    from glipcli.engine import training_state as ckpt
    from glipcli.engine.prompt_tuning import ADAPTER_FORMAT, ADAPTER_VERSION, OFFSET_KEY, load_adapter
    from glipcli.engine.runs import _read_run
    from glipcli.prompts.prompt_file import PromptSpec
    from glipcli.weights import infer_config
    from glipcli.yacs_config import config_from_yacs

    root = tmp_path_factory.mktemp("seeds")
    images = root / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(images / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat_(pet)"}]}

    def declared(path: Path):
        state, metadata = read_state_dict(path)
        cfg = infer_config(state, metadata, str(path))
        check_fits(cfg, state, str(path), optional_prefixes=("language.",))

    nano = get_preset("nano")
    tiny = dataclasses.replace(
        nano, name="fuzz-tiny", swin=dataclasses.replace(nano.swin, embed_dim=8, depths=(1, 1, 1, 1),
                                                         num_heads=(1, 1, 1, 1)),
        fpn=dataclasses.replace(nano.fpn, out_channels=16),
        language=dataclasses.replace(nano.language, hidden_size=16, num_layers=1, num_heads=1, intermediate_size=16),
        head=dataclasses.replace(nano.head, channels=16, num_layers=1, fusion_embed_dim=16, fusion_heads=1,
                                 group_norm_groups=4))
    small = {k: torch.zeros(shape, dtype=torch.float16) for k, shape in expected_shapes(tiny, "tiny").items()
             if not k.startswith("language.") and not any(p.match(k) for p in _DERIVED_KEYS)}
    pth = root / "seed.pth"
    torch.save({"model": {"module.backbone.body.patch_embed.proj.weight": torch.zeros(2, 3, 4, 4)}}, pth)
    run = {"task": "full", "config": {"task": "full", "shots": 1}, "model_config": nano.to_dict(),
           "data": {"train": {"ann": "/a.json", "images": "/i"}, "valid": None, "test": None},
           "source": {"model": "nano", "config": None, "weights": None, "prompt_file": None}}
    state_meta = {"format": ckpt.STATE_FORMAT, "state": json.dumps({"epoch": 1, "config": {}}),
                  "optimizer": json.dumps({"param_groups": [{"lr": 0.1, "betas": [0.9, 0.99]}],
                                           "state": {"0": {"step": "tensor"}}})}

    def run_folder(path: Path):
        folder = path.parent
        if path.name != "run.json":
            (folder / "run.json").write_bytes(path.read_bytes())
        return _read_run(folder)

    def latest(path: Path):
        folder = path.parent / "checkpoints"
        for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE):
            (folder / "epoch-0001-step-00000").mkdir(parents=True, exist_ok=True)
            (folder / "epoch-0001-step-00000" / name).write_bytes(b"")
        (folder / "latest.json").write_bytes(path.read_bytes())
        return ckpt.latest(path.parent)

    buffer = root / "img.jpg"
    Image.new("RGB", (24, 16), (10, 200, 30)).save(buffer, quality=80)
    return {
        "prompt-yaml": (b"classes:\n  - dog\n  - name: cat\n    text: small cat\n    threshold: 0.4\n"
                        b"suppress: [toy]\n", None, "p.yaml"),
        "classes-file": (b"dog\ncat, a small cat\n# note\n", PromptSpec.from_classes_file, "c.txt"),
        "coco-annotations": (json.dumps(coco).encode(), lambda p: load_coco(p, images, "train"), "ann.json"),
        "coco-ground-truth": (json.dumps(coco).encode(), CocoIndex.load, "gt.json"),
        "yacs-config": (b"MODEL:\n  SWINT:\n    EMBED_DIM: 96\n  DYHEAD:\n    NUM_CONVS: 6\n"
                        b"INPUT:\n  MIN_SIZE_TEST: 800\n", config_from_yacs, "cfg.yaml"),
        "suite-yaml": (b"name: mine\ndatasets:\n  - name: a\n    val: {ann_file: ann.json, img_dir: images}\n",
                       load_suite_file, "suite.yaml"),
        "glip-safetensors": (_safetensors(root / "w.safetensors", small,
                                          config_metadata(tiny)),
                             declared, "w.safetensors"),
        "official-pth": (pth.read_bytes(), read_state_dict, "w.pth"),
        "training-state": (_safetensors(root / "s.safetensors", {"optim/0/step": torch.zeros(1)}, state_meta),
                           ckpt.load_state, "state.safetensors"),
        "adapter": (_safetensors(root / "a.safetensors", {OFFSET_KEY: torch.zeros(4, 8)},
                                 {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "caption": "dog",
                                  "phrases": '[["dog", 0, 3]]', "input_ids": "[101, 3899, 102]",
                                  "class_names": '["dog"]', "base_model": '{"config_name": "nano"}'}),
                    load_adapter, "adapter.safetensors"),
        "run-json": (json.dumps(run).encode(), run_folder, "run.json"),
        "latest-json": (b'{"name": "epoch-0001-step-00000", "epoch": 1}', latest, "pointer.json"),
        "png-image": ((images / "a.png").read_bytes(), load_image, "x.png"),
        "jpeg-image": (buffer.read_bytes(), load_image, "x.jpg"),
    }


def _check_one(reader: Callable[[Path], object], path: Path) -> None:
    tracemalloc.start()
    try:
        reader(path)
    except GlipError as exc:
        message = str(exc)
        assert "\n" not in message and 0 < len(message) <= MAX_MESSAGE_CHARS, message
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MAX_PYTHON_MB * 2**20, f"{path.name}: {peak / 2**20:.0f} MB of Python memory"


def _check_cli(path: Path, capsys) -> None:
    from glipcli.cli.main import main

    capsys.readouterr()
    code = main(["prompt", "show", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code != 0:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)


FORMATS = ["prompt-yaml", "classes-file", "coco-annotations", "coco-ground-truth", "yacs-config", "suite-yaml",
           "glip-safetensors", "official-pth", "training-state", "adapter", "run-json", "latest-json",
           "png-image", "jpeg-image"]


def _fuzz(fmt: str, seeds, tmp_path: Path, capsys, examples: int, derandomize: bool) -> None:
    data, reader, name = seeds[fmt]
    folder = tmp_path / fmt
    folder.mkdir()
    path = folder / name
    text_format = not name.endswith((".safetensors", ".pth", ".png", ".jpg"))

    @settings(max_examples=examples, deadline=5000, derandomize=derandomize, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(MUTATIONS)
    def run(mutations):
        path.write_bytes(mutate(data, mutations, tokens=text_format))
        if reader is None:
            _check_cli(path, capsys)
        else:
            _check_one(reader, path)

    if reader is not None:
        path.write_bytes(data)
        reader(path)  # the seed itself is valid: mutations start from a file the reader accepts
    run()


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_every_reader(fmt, seeds, tmp_path, capsys):
    _fuzz(fmt, seeds, tmp_path, capsys, FAST_EXAMPLES, derandomize=True)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_every_reader_long(fmt, seeds, tmp_path, capsys):
    _fuzz(fmt, seeds, tmp_path, capsys, SLOW_EXAMPLES, derandomize=False)


def test_mutations_reach_the_structural_cases():
    """The token mutations build what the readers must survive: deep nesting, aliases, NaN."""
    grown = mutate(b"a: 1\n", [("replace", 0, bytes([0, 39]))], tokens=True)
    assert grown.startswith(b"[" * 40)
    assert struct.calcsize("<Q") == 8  # safetensors' header length field the byte flips hit
