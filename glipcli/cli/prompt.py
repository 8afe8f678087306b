"""`glip prompt show`: preview the captions, spans, tokens and token budget of a prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glipcli.cli.app import app, stdout
from glipcli.errors import GlipError
from glipcli.cli import ranges

prompt_app = typer.Typer(help="Inspect prompts before running a model.", no_args_is_help=True)
app.add_typer(prompt_app, name="prompt")


@prompt_app.command("show", short_help="Each caption a prompt becomes: phrase spans, wordpieces, tokens.")
def show(
    prompt_file: Annotated[Optional[Path], typer.Argument(help="A YAML prompt file.", show_default=False)] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", metavar="TEXT",
                                                        help='Class names: "person. bicycle." (repeatable).')] = None,
    classes_file: Annotated[Optional[Path], typer.Option(help="Class names, one per line.")] = None,
    chunk_size: Annotated[Optional[int], typer.Option(callback=ranges.count(1),
                                                      help="At most this many classes per caption.")] = None,
    max_tokens: Annotated[int, typer.Option(callback=ranges.count(3),
                                            help="The model's token budget ([CLS] and [SEP] included).")] = 256,
) -> None:
    """Show each caption the prompt becomes, every phrase's span and wordpieces, and the tokens used."""
    # deferred import: keeps `glip --help` fast
    from glipcli.prompts.chunking import plan_chunks
    from glipcli.prompts.prompt_file import load_prompt_spec

    if max_tokens < 3:
        raise GlipError(f"--max-tokens must be at least 3 (got {max_tokens})")
    spec = load_prompt_spec(prompts=prompt, classes_file=classes_file, prompt_file=prompt_file)
    plan = plan_chunks(spec, max_tokens=max_tokens, chunk_size=chunk_size)
    for line in preview_lines(plan):
        stdout.print(line, markup=False, highlight=False, soft_wrap=True)


def preview_lines(plan) -> list[str]:
    """The preview as plain text lines (one block per chunk)."""
    # deferred import: keeps `glip --help` fast
    from glipcli.prompts.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    spec = plan.spec
    lines = [f"{_count(len(spec.classes), 'class', 'classes')}, "
             f"{_count(len(spec.suppress), 'suppression phrase', 'suppression phrases')} -> "
             f"{_count(len(plan.chunks), 'caption', 'captions')} of at most {plan.max_tokens} tokens "
             "([CLS] and [SEP] included)"]
    for number, chunk in enumerate(plan.chunks, start=1):
        prompt = chunk.prompt
        first, last = chunk.class_indices[0], chunk.class_indices[-1]
        lines += ["", f"caption {number}/{len(plan.chunks)}: classes {first}-{last}, "
                      f"{prompt.num_tokens}/{plan.max_tokens} tokens used, "
                      f"{plan.max_tokens - prompt.num_tokens} free",
                  f"  {prompt.caption!r}"]
        wordpieces = tokenizer.convert_ids_to_tokens(prompt.input_ids[0].tolist())
        for position, (phrase, tokens) in enumerate(zip(prompt.phrases, prompt.token_spans), start=1):
            index = chunk.phrase_class(position)
            if index is None:
                head, notes = "suppress", ["never reported"]
            else:
                cls = spec.classes[index]
                head = f"class {index}"
                notes = [] if cls.name == phrase.text else [f"label {cls.name!r}"]
                if cls.threshold is not None:
                    notes.append(f"threshold {cls.threshold:g}")
            pieces = " ".join(wordpieces[t] for t in tokens) if tokens else "(no tokens: dropped)"
            where = f"tokens {tokens[0]}-{tokens[-1]}" if tokens else "tokens -"
            note = f"  [{'; '.join(notes)}]" if notes else ""
            lines.append(f"  {head:>10}  {phrase.text!r} chars {phrase.start}-{phrase.end}  "
                         f"{where}: {pieces}{note}")
    return lines


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
