"""Runs: nothing is lost and interrupted work resumes.

- `kill -9` of `glip finetune` in the middle of writing a checkpoint, then `--resume`, ends with the
  very bytes of an uninterrupted run;
- a full disk while saving a checkpoint is one error line naming the file; the previous checkpoint
  stays intact and the run resumes from it to the same final weights;
- damaged training checkpoints are refused on `--resume` with one line;
- result files are written atomically (a writer failing mid-write leaves the previous file);
- existing outputs are never replaced without `--overwrite` (or `--resume` for a run).

Covered elsewhere: resuming after a Ctrl-C at several steps, in-process (tests/test_training.py);
`detect --json/--coco-results/--save-vis` and `convert` refusing to replace files
(tests/test_batch_outputs.py, tests/test_hub_convert.py); a failed safetensors save keeping the old
file (tests/test_checkpoint.py); bench prediction logs resuming after a damaged tail
(tests/test_bench_runner.py).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from reliability_utils import assert_one_line_error, glip, golden_args, write_tiny_weights
from training_utils import shapes_dataset

# 3 images, batch 2: 2 steps per epoch, 3 epochs, one checkpoint per epoch; no validation split, so
# model_best.safetensors is the last epoch's weights (the final weights of the run).
RUN_OPTIONS = ["--epochs", "3", "--batch-size", "2", "--seed", "7", "--lr", "0.001", "--cpu", "--no-progress"]


@pytest.fixture(scope="module")
def setup(golden_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    data = shapes_dataset(root / "data", train_images=3, val=False, size=(96, 64))
    return {"root": root, "data": data, "weights": write_tiny_weights(golden_dir, root / "tiny.safetensors")}


def _args(setup, out: Path) -> list[str]:
    return ["finetune", "--data", str(setup["data"]), "--weights", str(setup["weights"]), "--output", str(out),
            *RUN_OPTIONS]


@pytest.fixture(scope="module")
def straight(setup) -> Path:
    """The uninterrupted run."""
    from glipcli.cli.main import main

    out = setup["root"] / "straight"
    assert main(_args(setup, out)) == 0
    return out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _assert_bitwise_equal(got_file: Path, want_file: Path) -> None:
    """Same tensors bit for bit (dtype, shape, raw bytes) and same metadata. (The files' bytes
    themselves are not compared: safetensors writes its metadata map in a random order.)"""
    with safe_open(str(got_file), framework="pt") as f, safe_open(str(want_file), framework="pt") as g:
        assert f.metadata() == g.metadata()
        assert sorted(f.keys()) == sorted(g.keys())
        for key in g.keys():
            got, want = f.get_tensor(key), g.get_tensor(key)
            assert got.dtype == want.dtype and got.shape == want.shape, key
            assert got.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() == \
                want.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes(), (got_file.name, key)


def _latest(out: Path) -> Path:
    return out / "checkpoints" / json.loads((out / "checkpoints" / "latest.json").read_text())["name"]


def _assert_same_final_weights(out: Path, straight: Path) -> None:
    """The run ended exactly as the uninterrupted one: final weights, optimiser state, schedules."""
    _assert_bitwise_equal(out / "model_best.safetensors", straight / "model_best.safetensors")
    _assert_bitwise_equal(_latest(out) / "model.safetensors", _latest(straight) / "model.safetensors")
    _assert_bitwise_equal(_latest(out) / "state.safetensors", _latest(straight) / "state.safetensors")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["steps"] == 6 and metrics["epochs_run"] == 3


def _assert_no_partial_file_under_a_final_name(out: Path) -> None:
    """Every visible file is complete; only hidden temporary names may hold partial data."""
    for path in out.rglob("*"):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(out).parts):
            continue
        if path.suffix == ".safetensors":
            _tensors(path)  # a truncated file would not parse
        elif path.suffix in (".json", ".jsonl"):
            text = path.read_text()
            lines = text.splitlines() if path.suffix == ".jsonl" else [text]
            for line in lines:
                json.loads(line)


# -- kill -9 -----------------------------------------------------------------------------------------
_PAUSING_GLIP = textwrap.dedent("""
    # `glip` that, once a first checkpoint exists, pauses for good halfway through writing the
    # next checkpoint file (half its bytes on disk), so the test can kill -9 it right there.
    import sys, time
    from pathlib import Path
    import safetensors.torch

    marker, out = Path(sys.argv[1]), Path(sys.argv[2])
    real_save_file = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        path = Path(filename)
        if (out / "checkpoints" / "latest.json").exists() and (out / "checkpoints") in path.parents:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            marker.write_text(str(path))
            time.sleep(600)

    safetensors.torch.save_file = save_file
    from glipcli.cli.main import main
    sys.exit(main(sys.argv[3:]))
""")


def test_kill_9_mid_checkpoint_then_resume_gives_the_uninterrupted_weights(setup, straight, tmp_path, capsys):
    from glipcli.cli.main import main

    out, marker = tmp_path / "killed", tmp_path / "paused.txt"
    threads = str(torch.get_num_threads())  # the same kernels as this process, for bitwise equality
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.Popen([sys.executable, "-c", _PAUSING_GLIP, str(marker), str(out), *_args(setup, out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"never reached a second checkpoint (exit {proc.poll()}): {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()

    partial = Path(marker.read_text())
    assert partial.exists() and partial.name.startswith("."), "killed with half a file under a temporary name"
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    _assert_no_partial_file_under_a_final_name(out)
    assert not json.loads((out / "metrics.json").read_text())["finished"]

    capsys.readouterr()
    assert main(["finetune", "--output", str(out), "--resume", "--cpu", "--no-progress"]) == 0
    assert "resuming at epoch 2, step 0" in capsys.readouterr().err
    _assert_same_final_weights(out, straight)
    _assert_no_partial_file_under_a_final_name(out)
    assert not list((out / "checkpoints").glob(".*")), "temporary checkpoint folders are cleaned up"
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1 and events[-1] == "end"


# -- disk full -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def disk_full_run(setup) -> tuple[Path, int, str, dict[str, bytes]]:
    """A run whose disk fills up while the second checkpoint is written (ENOSPC from the
    safetensors writer, after half the file is on disk). Returns the run folder, exit status,
    stderr and the bytes of the first checkpoint's files as they were before the failure."""
    from glipcli.cli.main import main

    out = setup["root"] / "disk_full"
    real_save_file = safetensors.torch.save_file
    first: dict[str, bytes] = {}

    def save_file(tensors, filename, metadata=None):
        path = Path(filename)
        latest = out / "checkpoints" / "latest.json"
        if latest.exists() and (out / "checkpoints") in path.parents:
            first.update({p.name: p.read_bytes() for p in _latest(out).iterdir()})
            real_save_file(tensors, filename, metadata=metadata)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_save_file(tensors, filename, metadata=metadata)

    mp = pytest.MonkeyPatch()
    mp.setattr(safetensors.torch, "save_file", save_file)
    buffer = io.StringIO()
    try:
        with redirect_stderr(buffer):  # the CLI's rich consoles write to sys.stderr as it is now
            code = main(_args(setup, out))
    finally:
        mp.undo()
    return out, code, buffer.getvalue(), first


def test_disk_full_while_saving_is_one_line_naming_the_file(disk_full_run):
    out, code, err, _ = disk_full_run
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1, err
    assert "no space left on device" in errors[0]
    assert str(out / "checkpoints") in errors[0] and ".safetensors" in errors[0]


def test_disk_full_leaves_the_previous_checkpoint_intact(disk_full_run):
    out, _, _, first = disk_full_run
    assert first, "the failure happened after a first checkpoint"
    latest = _latest(out)
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    assert {p.name: p.read_bytes() for p in latest.iterdir()} == first
    _assert_no_partial_file_under_a_final_name(out)


def test_run_resumes_after_the_disk_is_freed(disk_full_run, straight, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(disk_full_run[0], out)
    # run.json records absolute data paths: the copy trains on the same files
    code, _, err = glip(capsys, "finetune", "--output", out, "--resume", "--cpu", "--no-progress")
    assert code == 0, err
    _assert_same_final_weights(out, straight)


# -- damaged training checkpoints on --resume ----------------------------------------------------------
def _halve(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated model weights": (lambda out: _halve(_latest(out) / "model.safetensors"),
                                lambda out: [str(_latest(out) / "model.safetensors"), "truncated or damaged"]),
    "truncated training state": (lambda out: _halve(_latest(out) / "state.safetensors"),
                                 lambda out: [str(_latest(out) / "state.safetensors"), "damaged checkpoint file"]),
    "garbage pointer": (lambda out: (out / "checkpoints" / "latest.json").write_text("{\"na"),
                        lambda out: [str(out / "checkpoints" / "latest.json"), "damaged"]),
    "pointer to a deleted checkpoint": (lambda out: shutil.rmtree(_latest(out)),
                                        lambda out: ["incomplete checkpoint"]),
    "run.json damaged": (lambda out: (out / "run.json").write_text("{"), lambda out: [str(out / "run.json"), "damaged"]),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_on_resume_is_one_line(disk_full_run, tmp_path, capsys, case):
    out = tmp_path / "run"
    shutil.copytree(disk_full_run[0], out)
    damage, needles = DAMAGE[case]
    expected = needles(out)  # computed before the damage (it may remove the pointer's target)
    damage(out)
    code, _, err = glip(capsys, "finetune", "--output", out, "--resume", "--cpu", "--no-progress")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert_one_line_error(code, errors[0], *expected)


# -- atomic result files ----------------------------------------------------------------------------
def _failing_write_text(real):
    def write_text(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)  # half the file reaches the disk...
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))  # ...then the device fails
    return write_text


def test_json_result_is_replaced_atomically_or_not_at_all(golden_dir, tmp_path, capsys, monkeypatch):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (48, 32), (90, 140, 60)).save(image)
    out = tmp_path / "results" / "out.json"
    out.parent.mkdir()
    out.write_text('[{"previous": "results"}]\n')
    monkeypatch.setattr(Path, "write_text", _failing_write_text(Path.write_text))
    code, _, err = glip(capsys, "detect", image, *golden_args(golden_dir), "-p", "dog", "--json", out,
                        "--overwrite", "-q")
    assert_one_line_error(code, err, str(out), "cannot write the file (input/output error)",
                          "previous version is unchanged")
    assert out.read_text() == '[{"previous": "results"}]\n'
    assert [p.name for p in out.parent.iterdir()] == ["out.json"]


def test_rendering_is_written_atomically(golden_dir, tmp_path, capsys, monkeypatch):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (48, 32), (90, 140, 60)).save(image)
    vis = tmp_path / "vis"
    vis.mkdir()
    (vis / "photo.png").write_bytes(b"previous rendering")
    real_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        if Path(str(fp)).parent == vis:
            Path(fp).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    code, _, err = glip(capsys, "detect", image, *golden_args(golden_dir), "-p", "dog", "--save-vis", vis,
                        "--overwrite", "-q")
    assert_one_line_error(code, err, str(vis / "photo.png"), "no space left on device")
    assert (vis / "photo.png").read_bytes() == b"previous rendering"
    assert [p.name for p in vis.iterdir()] == ["photo.png"]


# -- never overwritten without asking ---------------------------------------------------------------
@pytest.mark.parametrize("option", ["--json", "--save-vis"])
def test_ground_never_replaces_existing_outputs(golden_dir, tmp_path, capsys, option):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (48, 32), (90, 140, 60)).save(image)
    target = tmp_path / "out.json" if option == "--json" else tmp_path / "vis"
    existing = target if option == "--json" else target / "photo.png"
    existing.parent.mkdir(exist_ok=True)
    existing.write_text("precious")
    code, _, err = glip(capsys, "ground", image, "a dog", *golden_args(golden_dir), option, target)
    assert_one_line_error(code, err, str(existing), "already exists (pass --overwrite to replace it)")
    assert existing.read_text() == "precious"


@pytest.mark.parametrize("command", ["finetune", "prompt-tune"])
def test_training_never_replaces_an_existing_run(setup, straight, tmp_path, capsys, command):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = _args(setup, out)
    code, _, err = glip(capsys, command, *args[1:])
    assert_one_line_error(code, err, str(out), "already holds a training run", "--resume")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_an_os_error_anywhere_in_a_command_is_one_line(setup, tmp_path, capsys, monkeypatch):
    """A full disk hit outside the atomic writers (e.g. appending to log.jsonl) still ends as one
    line naming the file, not a traceback."""
    import glipcli.engine.runs as runs

    log = tmp_path / "run" / "log.jsonl"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(log))

    monkeypatch.setattr(runs, "run_training", full_disk)
    code, _, err = glip(capsys, *_args(setup, tmp_path / "run"))
    assert_one_line_error(code, err, f"error: {log}: no space left on device")
