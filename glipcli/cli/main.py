"""`glip` console entry point: registers the commands and turns user errors into one line."""

from __future__ import annotations

import sys
import warnings

import click

from glipcli.cli import bench  # noqa: F401  (registers `glip bench`)
from glipcli.cli import convert  # noqa: F401  (registers `glip convert`)
from glipcli.cli import data  # noqa: F401  (registers `glip data`)
from glipcli.cli import detect  # noqa: F401  (registers the command)
from glipcli.cli import export  # noqa: F401  (registers `glip export`)
from glipcli.cli import finetune  # noqa: F401  (registers `glip finetune`)
from glipcli.cli import ground  # noqa: F401  (registers `glip ground`)
from glipcli.cli import label  # noqa: F401  (registers `glip label`)
from glipcli.cli import prompt  # noqa: F401  (registers `glip prompt`)
from glipcli.cli import synth  # noqa: F401  (registers `glip synth-data`)
from glipcli.cli import prompt_tune  # noqa: F401  (registers `glip prompt-tune`)
from glipcli.cli import pretrain  # noqa: F401  (registers `glip pretrain`)
from glipcli.cli.app import app, stderr
from glipcli.errors import GlipError


def _exception_types() -> tuple[tuple, tuple, tuple]:
    """(abort, usage-error, exit) exception types of click and of typer's own vendored copy of
    click (typer >= 0.25 raises those), whichever this environment has."""
    abort, error, exit_ = [click.exceptions.Abort], [click.exceptions.ClickException], [click.exceptions.Exit]
    try:
        from typer import exceptions as typer_exceptions
        from typer._click import exceptions as vendored  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        error.append(vendored.ClickException)
        abort.extend(getattr(typer_exceptions, "Abort", ()) and [typer_exceptions.Abort])
        exit_.extend(getattr(typer_exceptions, "Exit", ()) and [typer_exceptions.Exit])
    return tuple(abort), tuple(error), tuple(exit_)


_ABORT, _CLICK_ERROR, _EXIT = _exception_types()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and exit status 2.

    An operating-system error that escaped the commands' own checks (a disk filling up while a
    log line is appended, a permission change mid-run) is reported the same way, naming the file.
    PIL's warnings about odd images it still decodes (a corrupt EXIF block, a very large image
    under the decompression-bomb limit) are not shown: glip handles those images as documented."""
    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
    try:
        # Typer turns a Ctrl-C into exit code 130, returned (not raised) in non-standalone mode.
        code = app(args=argv, standalone_mode=False)
    except GlipError as exc:
        _error_line(str(exc))
        return 2
    except _ABORT:
        stderr.print("aborted", highlight=False)
        return 130
    except _CLICK_ERROR as exc:
        exc.show()
        return exc.exit_code
    except _EXIT as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        stderr.print("interrupted", highlight=False)
        return 130
    except OSError as exc:
        _error_line(os_error_message(exc))
        return 2
    except RecursionError:  # a structure nested past every reader's own limit
        _error_line("an input is nested too deeply to be read")
        return 2
    except Exception as exc:
        from glipcli.io import write_failure_reason

        reason = write_failure_reason(exc)  # a library's own type for a full disk (SafetensorError, ...)
        if reason is None:
            raise
        _error_line(f"cannot write a file ({reason})")
        return 2
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def _error_line(message: str) -> None:
    """`error: MESSAGE` as one line, whatever the message holds (a file name with a newline)."""
    line = " ".join(message.splitlines())
    stderr.print(f"error: {line}", highlight=False, markup=False, soft_wrap=True)


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: the file, then the reason ("no space left on device", ...)."""
    # deferred import: keeps `glip --help` fast
    from glipcli.io import os_reason

    return f"{exc.filename}: {os_reason(exc)}" if exc.filename is not None else os_reason(exc)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
