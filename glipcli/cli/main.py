"""`glip` console entry point: registers the commands and turns user errors into one line."""

from __future__ import annotations

import sys

import click

from glipcli.cli import bench  # noqa: F401  (registers `glip bench`)
from glipcli.cli import convert  # noqa: F401  (registers `glip convert`)
from glipcli.cli import detect  # noqa: F401  (registers the command)
from glipcli.cli import finetune  # noqa: F401  (registers `glip finetune`)
from glipcli.cli import ground  # noqa: F401  (registers `glip ground`)
from glipcli.cli import prompt  # noqa: F401  (registers `glip prompt`)
from glipcli.cli import synth  # noqa: F401  (registers `glip synth-data`)
from glipcli.cli import prompt_tune  # noqa: F401  (registers `glip prompt-tune`)
from glipcli.cli.app import app, stderr
from glipcli.errors import GlipError


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        # Typer turns a Ctrl-C into exit code 130, returned (not raised) in non-standalone mode.
        code = app(args=argv, standalone_mode=False)
    except GlipError as exc:
        stderr.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except click.exceptions.Abort:
        stderr.print("aborted", highlight=False)
        return 130
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        stderr.print("interrupted", highlight=False)
        return 130
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
