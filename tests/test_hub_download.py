"""Downloads through the real `huggingface_hub` code against a local hub on 127.0.0.1 (tests/hub_server.py):
the official weights (pinned commit, cache with no request, offline fails at once, a dropped connection
resumed) and the ODinW archives (`glip data download odinw`: installed in the official layout, resumed,
checked, refused when damaged, a second run does nothing; the missing-data error of `glip bench odinw`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glipcli.data.odinw.layout import BenchDataset, locate_odinw
from glipcli.data.odinw.registry import odinw_dataset
from glipcli.cli.main import main
from glipcli.data.odinw.download import (download_for_data, download_odinw, missing_message, odinw_archives,
                                         odinw_folder)
from glipcli.errors import GlipError
from glipcli.hub import HUB_CHECKPOINTS, HUB_REPO, HUB_REVISION, download_weights
from hub_server import HubServer
from odinw_archives import odinw_zip
from training_utils import tiny_model_args

pytestmark = pytest.mark.smoke  # the download code also runs against the declared huggingface_hub floor

RACCOON = "odinw_35/Raccoon.zip"
RACCOON_VAL = "odinw/Raccoon/Raccoon.v2-raw.coco/valid/annotations_without_background.json"
CHECKPOINT = HUB_CHECKPOINTS["glip-t-c"].filename


@pytest.fixture(scope="module")
def official_tiny(golden_dir, tmp_path_factory) -> bytes:
    """The golden tiny weights in the official checkpoint layout (`model`, DDP `module.` prefix), as bytes."""
    weights = load_file(str(golden_dir / "tiny" / "weights.safetensors"))
    buf = io.BytesIO()
    torch.save({"model": {"module." + k: v for k, v in weights.items()}, "iteration": 1}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def raccoon_zip(shared_dir) -> bytes:
    return odinw_zip(shared_dir / "data" / "real" / "raccoon", "Raccoon", "Raccoon.v2-raw.coco/")


@pytest.fixture
def hub(official_tiny, raccoon_zip):
    with HubServer(HUB_REPO, HUB_REVISION, {CHECKPOINT: official_tiny, RACCOON: raccoon_zip}) as server:
        yield server


@pytest.fixture
def small_chunks(monkeypatch):
    """huggingface_hub writes what it received in 10 MB chunks; tiny files need tiny chunks for a
    dropped connection to leave bytes behind to resume from."""
    from huggingface_hub import constants, file_download

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    monkeypatch.setattr(file_download, "DOWNLOAD_CHUNK_SIZE", 4096, raising=False)  # huggingface_hub < 1.0


def _gets(hub: HubServer) -> list[tuple[str, str, str | None]]:
    return [r for r in hub.requests if r[1].startswith("/lfs/")]


def _hub_requests(hub: HubServer) -> list[tuple[str, str, str | None]]:
    return [r for r in hub.requests if "/resolve/" in r[1] or r[1].startswith("/lfs/")]


# -- weights --------------------------------------------------------------------------------------
def test_weights_download_then_load_from_cache_with_no_request(hub, tmp_path, monkeypatch, golden_dir,
                                                               official_tiny):
    from glipcli.predictor import GLIPPredictor

    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    cache = tmp_path / "hub"
    path = download_weights("glip-t-c", cache_dir=cache)
    assert path.read_bytes() == official_tiny
    assert HUB_REVISION in path.parts  # the snapshot of the pinned commit
    assert ("HEAD", f"/{HUB_REPO}/resolve/{HUB_REVISION}/{CHECKPOINT}", None) in hub.requests
    assert len(_gets(hub)) == 1

    hub.requests.clear()
    assert download_weights("glip-t-c", cache_dir=cache) == path
    assert _hub_requests(hub) == []  # cached at the pinned commit: no request at all

    hub.stop()  # and with the network down, the cached file still loads (into the model, exactly)
    predictor = GLIPPredictor.from_pretrained("glip-t-c", config=golden_dir / "tiny" / "config.yaml",
                                              cache_dir=cache)
    (result,) = predictor.predict(golden_dir / "tiny" / "image.png", "person. bicycle. car. dog")
    ref = load_file(str(golden_dir / "tiny" / "outputs_det.safetensors"))["final_scores"].sort(descending=True).values
    assert torch.allclose(torch.tensor([d.score for d in result.detections]), ref, atol=1e-5)


def test_weights_offline_with_nothing_cached_fails_at_once(hub, tmp_path, monkeypatch, capsys, golden_dir):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    hub.stop()
    start = time.perf_counter()
    code = main(["detect", str(golden_dir / "tiny" / "image.png"), "-p", "person. bicycle."])
    elapsed = time.perf_counter() - start
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in ("glip_tiny_model_o365_goldg_cc_sbu.pth", "not in the local Hugging Face cache",
                   "cannot be reached", "--weights PATH", f"/resolve/{HUB_REVISION}/"):
        assert needle in err, err
    # huggingface_hub alone retries an unreachable hub for about 23 s before giving up
    assert elapsed < 8, f"took {elapsed:.1f} s"


def test_weights_dropped_connection_is_resumed(hub, tmp_path, monkeypatch, small_chunks, official_tiny):
    hub.cut_once(CHECKPOINT)
    path = download_weights("glip-t-c", cache_dir=tmp_path / "hub", endpoint=hub.endpoint)
    assert path.read_bytes() == official_tiny
    first, second = _gets(hub)
    assert first[2] is None
    assert second[2] is not None and second[2].startswith("bytes=")
    resumed_at = int(second[2][len("bytes="):].rstrip("-"))
    assert 0 < resumed_at < len(official_tiny)  # continued, not restarted


def test_weights_not_enough_disk_is_refused_before_downloading(hub, tmp_path, monkeypatch, official_tiny):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(GlipError, match=rf"glip-t-c: {CHECKPOINT} needs 2\d.\d MB but only 1.0 kB is free"):
        download_weights("glip-t-c", cache_dir=tmp_path / "hub", endpoint=hub.endpoint)
    assert _gets(hub) == []


def test_weights_missing_on_the_hub_is_one_line(hub, tmp_path):
    with pytest.raises(GlipError, match=r"glip-l: glip_large_model.pth was not found in GLIPModel/GLIP at commit "
                                        r"66ee3ae9a3b8 on the Hugging Face hub; download https://huggingface.co/"):
        download_weights("glip-l", cache_dir=tmp_path / "hub", endpoint=hub.endpoint)


# -- ODinW ----------------------------------------------------------------------------------------
def _installed(root: Path) -> BenchDataset:
    found = locate_odinw(odinw_dataset("Raccoon"), root, need_train=True)
    assert isinstance(found, BenchDataset), found
    return found


def _leftovers(root: Path) -> list[str]:
    odinw = root / "odinw"
    return sorted(p.relative_to(root).as_posix() for p in odinw.rglob("*")) if odinw.exists() else []


def test_odinw_download_installs_the_official_layout_and_a_second_run_does_nothing(hub, tmp_path, raccoon_zip):
    root = tmp_path / "DATASET"
    result = download_odinw(odinw_archives(datasets=["Raccoon"]), root, endpoint=hub.endpoint)
    assert result.fetched == ["Raccoon"] and result.present == []
    found = _installed(root)
    assert found.layout == "official" and found.eval.ann_file == root / RACCOON_VAL
    with zipfile.ZipFile(io.BytesIO(raccoon_zip)) as zf:  # every file unpacked, byte for byte
        for name in zf.namelist():
            assert (root / "odinw" / name).read_bytes() == zf.read(name)
    assert not any(".downloads" in p or ".extract-" in p for p in _leftovers(root))

    hub.requests.clear()
    again = download_odinw(odinw_archives(datasets=["Raccoon"]), root, endpoint=hub.endpoint)
    assert again.fetched == [] and again.present == ["Raccoon"]
    assert _hub_requests(hub) == []


def test_odinw_interrupted_download_resumes(hub, tmp_path, raccoon_zip, small_chunks):
    # A run stopped part-way leaves the bytes it had in the .part file: the next run asks only for the rest.
    root = tmp_path / "DATASET"
    part = root / "odinw" / ".downloads" / f"Raccoon-{HUB_REVISION[:12]}.zip.part"
    part.parent.mkdir(parents=True)
    half = len(raccoon_zip) // 2
    part.write_bytes(raccoon_zip[:half])
    assert _installed_or_none(root) is None
    download_odinw(odinw_archives(datasets=["Raccoon"]), root, endpoint=hub.endpoint)
    assert [g[2] for g in _gets(hub)] == [f"bytes={half}-"]
    _installed(root)
    assert not part.exists()

    # A connection dropped mid-file in the same run is resumed too.
    other = tmp_path / "other"
    hub.requests.clear()
    hub.cut_once(RACCOON)
    download_odinw(odinw_archives(datasets=["Raccoon"]), other, endpoint=hub.endpoint)
    ranges = [g[2] for g in _gets(hub)]
    assert ranges[0] is None and ranges[1] is not None and 0 < int(ranges[1][6:-1]) < len(raccoon_zip)
    _installed(other)


def _installed_or_none(root: Path):
    found = locate_odinw(odinw_dataset("Raccoon"), root)
    return found if isinstance(found, BenchDataset) else None


def _damaged_crc(data: bytes) -> bytes:
    """The archive with one byte of the first image's stored data changed (its CRC-32 no longer matches)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".jpg"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    out = bytearray(data)
    out[start + info.compress_size // 2] ^= 0xFF
    return bytes(out)


def _without_valid(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            if "/valid/" not in info.filename:
                dst.writestr(info, src.read(info))
    return buf.getvalue()


@pytest.mark.parametrize("damage, message", [
    ("crc", r"ODinW Raccoon: odinw_35/Raccoon.zip is damaged \(Bad CRC-32"),
    ("transfer", r"does not match the hub's sha256"),
    ("layout", r"odinw_35/Raccoon.zip lacks Raccoon/Raccoon.v2-raw.coco/valid/annotations_without_background.json"),
])
def test_odinw_damaged_archive_is_refused_and_nothing_is_left_in_place(hub, tmp_path, raccoon_zip, damage, message):
    if damage == "crc":
        hub.put(RACCOON, _damaged_crc(raccoon_zip))
    elif damage == "layout":
        hub.put(RACCOON, _without_valid(raccoon_zip))
    else:
        hub.damage_in_transfer(RACCOON)
    root = tmp_path / "DATASET"
    with pytest.raises(GlipError, match=message) as err:
        download_odinw(odinw_archives(datasets=["Raccoon"]), root, endpoint=hub.endpoint)
    assert "\n" not in str(err.value)
    assert _leftovers(root) == []  # no dataset folder, no temporary folder, no archive


def test_odinw_folder_in_the_way_is_not_touched(hub, tmp_path):
    root = tmp_path / "DATASET"
    mine = root / "odinw" / "Raccoon" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    with pytest.raises(GlipError, match="exists but is not a complete download"):
        download_odinw(odinw_archives(datasets=["Raccoon"]), root, endpoint=hub.endpoint)
    assert mine.read_text() == "mine" and _hub_requests(hub) == []


def test_odinw_not_enough_disk_is_refused_before_downloading(hub, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(GlipError, match=r"ODinW: 1 archive .* needs .* but only 1.0 kB is free"):
        download_odinw(odinw_archives(datasets=["Raccoon"]), tmp_path / "DATASET", endpoint=hub.endpoint)
    assert _gets(hub) == []


def test_archives_of_a_suite_and_of_names():
    assert len(odinw_archives("odinw35")) == 32  # 35 datasets; EgoHands, OxfordPets, AerialMaritimeDrone hold two
    assert [a.folder for a in odinw_archives("odinw13")][:3] == ["AerialMaritimeDrone", "Aquarium",
                                                                  "CottontailRabbits"]
    (ego,) = odinw_archives(datasets=["EgoHands"])
    assert ego.filename == "odinw_35/EgoHands.zip"
    assert {d.name for d in ego.datasets} == {"EgoHands_generic", "EgoHands_specific"}
    assert odinw_archives(datasets=["egohands-specific", "EgoHands_generic"]) == [ego]
    assert odinw_folder(Path("data/odinw")) == Path("data/odinw")  # the odinw folder itself works too
    with pytest.raises(GlipError, match="unknown dataset 'Racoon'"):
        odinw_archives(datasets=["Racoon"])


def test_finetune_download_helper(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    root = tmp_path / "DATASET"
    assert download_for_data("Raccoon", root) == root / "odinw" / "Raccoon"
    _installed(root)
    assert download_for_data(tmp_path, root) is None  # an existing folder is the user's data
    with pytest.raises(GlipError, match="--data Racoon: no such folder, and --download fetches only ODinW"):
        download_for_data("Racoon", root)


# -- the commands ---------------------------------------------------------------------------------
def _glip(args: list[str], cwd: Path, hub: HubServer) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HOME=str(cwd / "hf"),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    env.pop("GLIP_DATA_ROOT", None)
    return subprocess.run([sys.executable, "-m", "glipcli.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_data_download_command_as_a_user_types_it(hub, tmp_path):
    proc = _glip(["data", "download", "odinw", "--datasets", "Raccoon"], tmp_path, hub)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 1 downloaded into DATASET/odinw" in proc.stderr
    _installed(tmp_path / "DATASET")  # the default data root of `glip bench odinw`
    again = _glip(["data", "download", "odinw", "--datasets", "Raccoon"], tmp_path, hub)
    assert again.returncode == 0 and "nothing to download" in again.stderr


def test_finetune_by_dataset_name_with_download_as_a_user_types_it(hub, tmp_path, golden_dir):
    """`glip finetune --shots 1 --data Raccoon --download` in an empty folder: the dataset comes from
    the hub into ./DATASET, the run goes to runs/finetune/Raccoon and finishes."""
    work = tmp_path / "work"
    work.mkdir()
    model = tiny_model_args(golden_dir, tmp_path / "cfg")
    proc = _glip(["finetune", "--shots", "1", "--data", "Raccoon", "--download", *model, "--epochs", "1",
                  "--copies", "1", "--batch-size", "1", "--cpu", "--no-progress"], work, hub)
    assert proc.returncode == 0, proc.stderr
    _installed(work / "DATASET")
    assert f"run folder: {Path('runs/finetune/Raccoon')}" in proc.stderr
    metrics = json.loads((work / "runs/finetune/Raccoon/metrics.json").read_text())
    assert metrics["finished"] and metrics["classes"] == ["raccoon"]


def test_bench_missing_datasets_error_names_the_download_command(tmp_path, capsys):
    code = main(["bench", "odinw", "--zero-shot", "--data-root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 400, err
    assert err.startswith(f"error: 13 of 13 ODinW datasets missing under {tmp_path} "
                          "(AerialMaritimeDrone_large, Aquarium, CottontailRabbits and 10 more)")
    assert f"glip data download odinw --suite odinw13 --root {tmp_path}" in err


def test_bench_with_skip_missing_and_nothing_found_gives_the_same_short_error(tmp_path, capsys):
    code = main(["bench", "odinw", "--zero-shot", "--data-root", str(tmp_path), "--skip-missing"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "glip data download odinw --suite odinw13" in err, err


def test_missing_message_names_only_the_missing_datasets():
    line = missing_message(["Raccoon"], ["Raccoon", "pothole"], "odinw13", "my data")
    assert line.startswith("1 of 2 ODinW datasets missing under my data (Raccoon); fetch it with: "
                           "glip data download odinw --datasets Raccoon --root 'my data'")


def test_bench_download_fetches_the_missing_datasets(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("GLIP_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    code = main(["bench", "odinw", "--zero-shot", "--datasets", "Raccoon", "--download"])
    err = capsys.readouterr().err
    assert "[1/1] Raccoon" in err, err
    _installed(tmp_path / "DATASET")
    # downloaded, then the run goes on to the model (glip-t, which this hub does not serve)
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        "error: glip-t: glip_tiny_model_o365_goldg_cc_sbu.pth was not found in GLIPModel/GLIP"), err
