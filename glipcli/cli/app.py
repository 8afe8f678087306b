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
)
stdout = Console()
stderr = Console(stderr=True)


@app.callback()
def _root() -> None:
    """GLIP: zero-shot object detection and phrase grounding from text prompts."""
