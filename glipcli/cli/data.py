"""`glip data download odinw`: the ODinW datasets from the hub, into the layout `glip bench odinw` reads.
The work is done by `glipcli.data.odinw.download`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glipcli.cli.app import app, stderr, stdout

data_app = typer.Typer(name="data", no_args_is_help=True, pretty_exceptions_enable=False,
                       help="Datasets: download the ODinW benchmark from the hub.")
download_app = typer.Typer(name="download", no_args_is_help=True, pretty_exceptions_enable=False,
                           help="Download a benchmark's datasets.")
data_app.add_typer(download_app, name="download")
app.add_typer(data_app, name="data")


@download_app.command("odinw")
def odinw(
    suite: Annotated[str, typer.Option(help="odinw13 (13 datasets) or odinw35 (all 35).")] = "odinw13",
    datasets: Annotated[Optional[str], typer.Option(
        help="Only these datasets, e.g. Raccoon,EgoHands_generic (or archive folders such as EgoHands).")] = None,
    root: Annotated[Optional[Path], typer.Option(
        "--root", "--data-root",
        help="Data root: the datasets go to ROOT/odinw/<dataset>/, where `glip bench odinw --data-root` finds "
             "them (default: $GLIP_DATA_ROOT, else ./DATASET).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the suite's datasets (or those of --datasets) and "
                                                       "whether each is complete under the data root; "
                                                       "download nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Download ODinW datasets (official layout) from GLIPModel/GLIP at a pinned commit.

    Resumable (run it again after an interruption), checked (sha256, zip CRC, the expected annotation files)
    and installed atomically; datasets already complete are left alone.
    """
    from glipcli.data.odinw.download import download_odinw, odinw_archives, odinw_folder

    names = [d.strip() for d in (datasets or "").split(",") if d.strip()] or None
    archives = odinw_archives(suite, names)
    if list_:
        odinw_dir = odinw_folder(root)
        for archive in archives:
            state = "complete" if not archive.missing_paths(odinw_dir.parent) else "missing"
            stdout.print(f"{', '.join(d.name for d in archive.datasets)}  ({archive.filename}; "
                         f"{state} in {odinw_dir})", highlight=False, soft_wrap=True)
        return
    say = None if quiet else (lambda msg: stderr.print(msg, highlight=False, markup=False, soft_wrap=True))
    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    result = download_odinw(archives, root, say=say)
    if not quiet:
        total = len(archives)
        if result.fetched:
            stderr.print(f"{len(result.fetched)} of {total} downloaded into {result.odinw_dir}"
                         + (f" ({len(result.present)} already there)" if result.present else ""), highlight=False)
        else:
            stderr.print(f"all {total} already in {result.odinw_dir}; nothing to download", highlight=False)
