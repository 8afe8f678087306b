"""The `glip` Typer application and the consoles commands print to."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="glip",
    help="GLIP: zero-shot object detection and phrase grounding from text prompts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's plain help: names, a short metavar, and the help text wrapped under them (reads well at 80
    # columns, where rich's option table squeezed the help into a narrow strip beside the type column)
    rich_markup_mode=None,
)
stdout = Console()
stderr = Console(stderr=True)


@app.callback()
def _root() -> None:
    """GLIP: zero-shot object detection and phrase grounding from text prompts."""
