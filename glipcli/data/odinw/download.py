"""Download the ODinW datasets from the hub into the official layout `DATA/odinw/<Folder>/...`.

The ODinW archives live in the hub model repository `GLIPModel/GLIP` (the repository of the
checkpoints, `glipcli.hub`) as `odinw_35/<Folder>.zip`, one per dataset folder of the registry
(32 folders hold the 35 datasets of ODinW-35, e.g. `EgoHands/` holds `EgoHands_generic` and
`EgoHands_specific`). Each archive unpacks to `<Folder>/...` (an `odinw/` prefix is accepted too).

For each folder that is not already complete under DATA/odinw:

1. its size and sha256 come from one metadata request at the pinned commit (`HUB_REVISION`);
   the free disk space is checked for all archives before anything is fetched;
2. the archive is fetched with `huggingface_hub`'s downloader (progress bar) into
   `DATA/odinw/.downloads/<Folder>-<commit>.zip.part`; a run stopped part-way resumes from the
   bytes already there (an HTTP range request);
3. the whole file is checked against the hub's sha256, then unpacked (every member's CRC-32 is
   checked while reading) into a hidden temporary folder `DATA/odinw/.extract-<Folder>-*`, where
   the annotation files and image folders the registry names (train, val and evaluation split of
   each dataset) must all be present;
4. only then is the folder renamed into place and the archive deleted.

So an interrupted or refused download never leaves a folder at `DATA/odinw/<Folder>` that looks
like a dataset, and a second run finds every folder complete and does nothing.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers, tqdm

from glipcli.data.odinw.layout import _official_base, default_data_root
from glipcli.data.odinw.registry import OdinwDataset, find_datasets, name_key, odinw_suite
from glipcli.errors import GlipError
from glipcli.hub import (HUB_REPO, HUB_REVISION, RemoteFile, format_size, is_dropped_connection, remote_file,
                         require_free_space)

ARCHIVE_FOLDER = "odinw_35"
DOWNLOADS_FOLDER = ".downloads"
EXTRACT_PREFIX = ".extract-"
# The splits a dataset must have to count as complete (plus its evaluation split, e.g. minival).
REQUIRED_SPLITS = ("train", "val")
# Entries archivers add that are no part of a dataset.
_JUNK = ("__MACOSX/", ".DS_Store")


@dataclass(frozen=True)
class OdinwArchive:
    """One archive of the hub: `odinw_35/<folder>.zip`, unpacking to `odinw/<folder>/`, holding
    the registry's `datasets` (one or, for `AerialMaritimeDrone`, `EgoHands`, `OxfordPets`, two)."""

    folder: str
    datasets: tuple[OdinwDataset, ...]

    @property
    def filename(self) -> str:
        """Path of the archive in HUB_REPO."""
        return f"{ARCHIVE_FOLDER}/{self.folder}.zip"

    def required_paths(self, base: Path) -> list[Path]:
        """Annotation files and image folders that must exist under `base` (the folder holding
        `odinw/`) for the datasets of this archive to be complete."""
        paths: list[Path] = []
        for entry in self.datasets:
            for split in dict.fromkeys((*REQUIRED_SPLITS, entry.eval_split)):
                if split in entry.splits:
                    files = entry.splits[split]
                    paths += [base / files.ann_file, base / files.img_dir]
        return list(dict.fromkeys(paths))

    def missing_paths(self, base: Path) -> list[Path]:
        return [p for p in self.required_paths(base) if not p.exists()]


@dataclass
class DownloadResult:
    """What `download_odinw` did: the folders fetched and those already complete."""

    odinw_dir: Path
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)


def odinw_archives(suite: str = "odinw13", datasets: Sequence[str] | None = None) -> list[OdinwArchive]:
    """The archives holding `suite`'s datasets, or only those of `datasets` (dataset names of ODinW-35
    in any form the registry knows, or archive folder names such as `EgoHands`), in registry order."""
    every = odinw_suite("odinw35")
    by_folder: dict[str, list[OdinwDataset]] = {}
    for entry in every:
        by_folder.setdefault(entry.folder, []).append(entry)
    if datasets:
        folders: list[str] = []
        for name in datasets:
            folder = next((f for f in by_folder if name_key(f) == name_key(name)), None)
            if folder is None:
                folder = find_datasets(every, [name])[0].folder
            folders.append(folder)
    else:
        folders = [entry.folder for entry in odinw_suite(suite)]
    return [OdinwArchive(f, tuple(by_folder[f])) for f in dict.fromkeys(folders)]


def odinw_folder(root: str | Path | None = None) -> Path:
    """`DATA/odinw`, the folder the archives unpack into (DATA: `root`, else the default data root;
    DATA may also be the `odinw` folder itself, as for `glip bench odinw --data-root`)."""
    return _official_base(Path(root) if root is not None else default_data_root()) / "odinw"


def download_odinw(archives: Sequence[OdinwArchive], root: str | Path | None = None, *,
                   revision: str = HUB_REVISION, endpoint: str | None = None,
                   say: Callable[[str], None] | None = None) -> DownloadResult:
    """Fetch every archive whose datasets are not complete under `root` (see the module docstring).

    Raises GlipError (one line) when the hub cannot be reached, the disk is too small, an
    archive is corrupt or lacks the expected files, or a folder is in the way."""
    say = say or (lambda _msg: None)
    odinw_dir = odinw_folder(root)
    base = odinw_dir.parent
    result = DownloadResult(odinw_dir)
    todo: list[OdinwArchive] = []
    for archive in archives:
        missing = archive.missing_paths(base)
        if not missing:
            result.present.append(archive.folder)
            continue
        target = odinw_dir / archive.folder
        if target.exists():
            raise GlipError(f"{target} exists but is not a complete download (no {missing[0]}); move it away "
                            f"and run again to download {archive.filename}")
        todo.append(archive)
    if not todo:
        return result

    remotes = [_describe(archive, revision, endpoint) for archive in todo]
    parts = [_part_path(odinw_dir, archive, revision) for archive in todo]
    done = sum(p.stat().st_size for p in parts if p.is_file())
    sizes = [r.size or 0 for r in remotes]
    # Every archive is unpacked (about its own size: the images are compressed already) and deleted in turn.
    require_free_space(odinw_dir, sum(sizes) + max(sizes) - done,
                       f"ODinW: {len(todo)} archive{'s' if len(todo) != 1 else ''} "
                       f"({format_size(sum(sizes))}, unpacked about as much)")
    odinw_dir.mkdir(parents=True, exist_ok=True)
    say(f"downloading {len(todo)} ODinW archive{'s' if len(todo) != 1 else ''} ({format_size(sum(sizes))}) "
        f"from {HUB_REPO}@{revision[:12]} into {odinw_dir}")
    try:
        for i, (archive, remote, part) in enumerate(zip(todo, remotes, parts), 1):
            say(f"[{i}/{len(todo)}] {archive.folder} ({format_size(remote.size or 0)})")
            _fetch(remote, part, archive)
            _install(part, archive, odinw_dir, say)
            result.fetched.append(archive.folder)
    finally:
        _remove_empty(odinw_dir / DOWNLOADS_FOLDER)  # kept while it holds a part file to resume
    return result


def ensure_odinw_dataset(name: str, root: str | Path | None = None, *,
                         say: Callable[[str], None] | None = None, endpoint: str | None = None) -> Path:
    """The folder `DATA/odinw/<Folder>` of the ODinW dataset (or archive folder) `name`, downloaded
    first when it is not complete there (`glip finetune --data <name> --download`)."""
    (archive,) = odinw_archives(datasets=[name])
    result = download_odinw([archive], root, endpoint=endpoint, say=say)
    return result.odinw_dir / archive.folder


def download_for_data(data: str | Path, root: str | Path | None = None, *,
                      say: Callable[[str], None] | None = None) -> Path | None:
    """`--data NAME --download` of the training commands: when `data` is not an existing path but an
    ODinW dataset name (`EgoHands_generic`, `Raccoon`), download it under `root` if it is missing
    and return its folder `DATA/odinw/<Folder>`; None for an existing path."""
    if Path(data).exists():
        return None
    try:
        return ensure_odinw_dataset(str(data), root, say=say)
    except GlipError as exc:
        if str(exc).startswith(("unknown dataset", "empty dataset name")):
            raise GlipError(f"--data {data}: no such folder, and --download fetches only ODinW datasets by name "
                            "(e.g. --data EgoHands_generic; the names: glip data download odinw --list)") from None
        raise


def download_command(names: Sequence[str], root: str | Path | None = None, suite: str | None = None) -> str:
    """The `glip data download odinw` command that fetches `names` (or the whole `suite`) into
    `root` (`--root` left out for the default data root)."""
    which = f"--suite {suite}" if suite else f"--datasets {shlex.quote(','.join(names))}"
    command = f"glip data download odinw {which}"
    if root is not None and Path(root) != default_data_root():
        command += f" --root {shlex.quote(str(root))}"
    return command


def missing_message(missing: Sequence[str], selected: Sequence[str], suite: str, root: str | Path,
                    shown: int = 3) -> str:
    """One line for `glip bench odinw` when datasets are missing: how many, the first few, and the
    command that fetches them."""
    n = len(missing)
    names = ", ".join(missing[:shown]) + (f" and {n - shown} more" if n > shown else "")
    whole_suite = {name_key(m) for m in missing} == {name_key(d.name) for d in odinw_suite(suite)}
    command = download_command(missing, root, suite if whole_suite else None)
    return (f"{n} of {len(selected)} ODinW datasets missing under {root} ({names}); fetch "
            f"{'them' if n > 1 else 'it'} with: {command} (or add --download; --skip-missing runs the others)")


# -- steps ---------------------------------------------------------------------------------------
def _describe(archive: OdinwArchive, revision: str, endpoint: str | None) -> RemoteFile:
    return remote_file(archive.filename, revision=revision, endpoint=endpoint,
                       what=f"ODinW {archive.folder} ({archive.filename})",
                       hint=f"the archive is https://huggingface.co/{HUB_REPO}/resolve/{revision}/{archive.filename} "
                            "(it unpacks into the odinw/ folder of the data root)")


def _part_path(odinw_dir: Path, archive: OdinwArchive, revision: str) -> Path:
    return odinw_dir / DOWNLOADS_FOLDER / f"{archive.folder}-{revision[:12]}.zip.part"


def _fetch(remote: RemoteFile, part: Path, archive: OdinwArchive, attempts: int = 5) -> None:
    """Download (or finish downloading) `remote` into `part`, then check it against the sha256.

    A connection dropped after some bytes arrived is resumed here (older `huggingface_hub`
    versions do not resume within a call), up to `attempts` times; the part file is kept for the
    next run when the download still fails."""
    part.parent.mkdir(parents=True, exist_ok=True)
    if remote.size is not None and part.is_file() and part.stat().st_size > remote.size:
        part.unlink()
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.is_file() else 0
        if remote.size is not None and have >= remote.size:
            break
        try:
            with part.open("ab") as out:
                http_get(remote.location, out, resume_size=have, headers=build_hf_headers(token=False),
                         expected_size=remote.size, displayed_filename=Path(archive.filename).name)
            break
        except Exception as exc:  # the HTTP library's network errors
            grew = part.is_file() and part.stat().st_size > have
            if (grew or is_dropped_connection(exc)) and attempt < attempts:
                continue
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise GlipError(f"ODinW {archive.folder}: downloading {archive.filename} failed ({reason}); "
                            "run the same command again to resume") from None
    if remote.sha256 is not None and _sha256(part) != remote.sha256:
        part.unlink()
        raise GlipError(f"ODinW {archive.folder}: the downloaded {archive.filename} does not match the hub's "
                        "sha256 (damaged in transfer); it was deleted, run the command again")


def _install(part: Path, archive: OdinwArchive, odinw_dir: Path, say: Callable[[str], None]) -> None:
    """Unpack `part` into a temporary folder, check it, rename it into place, delete the archive."""
    for stale in odinw_dir.glob(f"{EXTRACT_PREFIX}{archive.folder}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run
    tmp = Path(tempfile.mkdtemp(prefix=f"{EXTRACT_PREFIX}{archive.folder}-", dir=odinw_dir))
    try:
        _extract(part, archive, tmp)
        missing = archive.missing_paths(tmp)
        if missing:
            more = f" and {len(missing) - 1} more expected files" if len(missing) > 1 else ""
            raise GlipError(f"ODinW {archive.folder}: {archive.filename} lacks "
                            f"{missing[0].relative_to(tmp / 'odinw').as_posix()}{more}; nothing was installed")
        (tmp / "odinw" / archive.folder).rename(odinw_dir / archive.folder)
    except GlipError:
        part.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    part.unlink(missing_ok=True)


def _extract(part: Path, archive: OdinwArchive, tmp: Path) -> None:
    """Unpack the archive's `<folder>/...` (or `odinw/<folder>/...`) entries to `tmp/odinw/<folder>/`,
    checking every entry's CRC-32; GlipError for a damaged archive or an entry outside the folder."""
    where = f"ODinW {archive.folder}: {archive.filename}"
    try:
        with zipfile.ZipFile(part) as zf:
            members = [m for m in zf.infolist() if not any(j in m.filename for j in _JUNK)]
            if not members:
                raise GlipError(f"{where} is empty; nothing was installed")
            strip = 1 if all(PurePosixPath(m.filename).parts[0] == "odinw" for m in members) else 0
            bar = tqdm(total=sum(m.file_size for m in members), unit="B", unit_scale=True,
                       desc=f"unpacking {archive.folder}", disable=None)
            for member in members:
                parts = PurePosixPath(member.filename).parts[strip:]
                if (not parts or parts[0] != archive.folder or ".." in parts
                        or PurePosixPath(member.filename).is_absolute()):
                    raise GlipError(f"{where} holds {member.filename!r}, outside {archive.folder}/; "
                                    "nothing was installed")
                dest = tmp.joinpath("odinw", *parts)
                if member.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                bar.update(member.file_size)
            bar.close()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise GlipError(f"{where} is damaged ({exc}); it was deleted and nothing was installed") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
