"""Every `glip ...` shell command in README.md and docs/*.md parses with the current CLI.

The commands are taken from fenced shell blocks (```bash, ```sh, ```console, ```text and unlabelled
blocks), lines starting with `glip ` or `$ glip ` (after optional `VAR=value` assignments), with `\\`
continuations joined. Each is tokenised like a shell would, cut at the first pipe, redirection or
`&&`/`;`, and handed to click's own parser, command by command down the groups: an unknown command, an
unknown option, an option missing its value, an unexpected extra argument or a missing required
argument fails. Nothing is run, no value is converted and no callback is called, so paths that only
exist on the reader's machine (`street.jpg`) do not matter.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from glipcli.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "text"}
_FENCE = re.compile(r"^\s*```\s*([\w+-]*)")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")
_SHELL_OPERATORS = set("|&;<>()")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of every line inside a fenced shell block, continuations joined."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if match:
            fence = match.group(1).lower() if fence is None else None
            pending = ""
            continue
        if fence is None or fence not in SHELL_FENCES:
            continue
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + stripped))
        pending = ""
    return out


def glip_argv(line: str) -> list[str] | None:
    """The arguments after `glip` when `line` runs glip, else None."""
    text = line.strip()
    if text.startswith("$ "):
        text = text[2:]
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: not a command line
        return None
    while tokens and _ENV.match(tokens[0]):
        tokens.pop(0)
    if not tokens or tokens[0] != "glip":
        return None
    argv = []
    for token in tokens[1:]:
        if set(token) <= _SHELL_OPERATORS:
            break
        argv.append(token)
    return argv


def doc_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in doc_files():
        for number, line in shell_lines(path.read_text(encoding="utf-8")):
            argv = glip_argv(line)
            if argv is not None:
                found.append((f"{path.relative_to(ROOT)}:{number}", argv))
    return found


def parse_without_running(argv: list[str]) -> None:
    """Parse `glip ARGV` as the CLI would, raising the CLI's usage error; runs nothing."""
    command = typer.main.get_command(app)
    ctx = command.context_class(command, info_name="glip")
    args = list(argv)
    while True:
        opts, rest, _ = command.make_parser(ctx).parse_args(args=args)
        if opts.get("help"):
            return
        if hasattr(command, "commands"):  # a group: the next word names a command
            if not rest:
                ctx.fail("Missing command.")
            name, command, args = command.resolve_command(ctx, rest)
            ctx = command.context_class(command, info_name=name, parent=ctx)
            continue
        if rest:
            ctx.fail(f"Got unexpected extra argument(s) ({' '.join(rest)})")
        missing = [p.name for p in command.get_params(ctx) if p.required and opts.get(p.name) in (None, (), [])]
        if missing:
            ctx.fail(f"Missing required parameter(s): {', '.join(missing)}")
        return


def parse_errors(commands: list[tuple[str, list[str]]]) -> list[str]:
    errors = []
    for where, argv in commands:
        try:
            parse_without_running(argv)
        except Exception as exc:  # click's (or typer's vendored click's) UsageError
            errors.append(f"{where}: glip {shlex.join(argv)}\n    {getattr(exc, 'message', exc)}")
    return errors


def test_docs_hold_glip_commands():
    commands = doc_commands()
    where = {w.split(":")[0] for w, _ in commands}
    assert "README.md" in where, "README.md shows no glip command"
    assert len(commands) >= 20, commands  # the docs' examples, not an extraction that silently finds nothing
    assert {argv[0] for _, argv in commands} >= {"detect", "ground", "convert", "finetune", "bench", "pretrain"}


def test_every_documented_command_parses():
    errors = parse_errors(doc_commands())
    assert not errors, "documented glip commands the CLI does not accept:\n" + "\n".join(errors)


@pytest.mark.parametrize("argv, message", [
    (["detect", "a.jpg", "-p", "cat", "--no-such-option"], "No such option"),
    (["detecc", "a.jpg"], "No such command"),
    (["bench", "odinw", "--data-root"], "requires an argument"),
    (["convert", "in.pth"], "target"),
    (["prompt", "shows", "-p", "cat"], "No such command"),
    (["convert", "a.pth", "b.safetensors", "c"], "unexpected extra argument"),
])
def test_parser_rejects_what_the_cli_rejects(argv, message):
    with pytest.raises(Exception, match=message):
        parse_without_running(argv)


def test_accepts_what_the_cli_accepts_without_touching_files():
    parse_without_running(["detect", "no/such/dir", "more/**/*.jpg", "-p", "person. dog", "--batch-size", "8",
                           "--json", "out.json", "--save-vis", "vis/"])
    parse_without_running(["detect", "--help"])
    parse_without_running(["prompt", "show", "--classes-file", "no-such-file.txt"])


def test_extraction_reads_fences_continuations_and_shell_syntax():
    text = "\n".join([
        "glip detect outside.jpg --bogus",  # outside a fence: prose, not checked
        "```bash",
        "$ glip detect a.jpg \\",
        "    -p cat --json out.json   # a comment",
        "GLIP_SHARED_DIR=/data glip ground b.jpg 'a cat' | head -3",
        "python -c 'print(1)'",
        "```",
        "```python",
        "glip = 1",
        "```",
        "```yaml",
        "glip detect yaml.jpg",
        "```",
    ])
    commands = [glip_argv(line) for _, line in shell_lines(text)]
    assert [c for c in commands if c is not None] == [
        ["detect", "a.jpg", "-p", "cat", "--json", "out.json"],
        ["ground", "b.jpg", "a cat"],
    ]
