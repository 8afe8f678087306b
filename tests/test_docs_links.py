"""The documentation's links and code paths point at things that exist.

Checked in README.md, docs/*.md, CONTRIBUTING.md and CHANGELOG.md:
- every relative Markdown link resolves to a file, and every `#anchor` to a heading of its target (GitHub's
  heading slugs);
- every dotted `glipcli.` path is importable: the longest importable module prefix, then attributes
  (`glipcli.data.coco.load_coco`); every written file path under `glipcli/`, `tests/`, `benchmarks/` or
  `examples/` exists;
- every docs/*.md file can be reached from README.md by following links.
Links inside fenced code blocks and inline code are not links; paths inside inline code are checked.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


_FENCE = re.compile(r"^\s*```")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_DOTTED = re.compile(r"(?<![\w./-])glipcli(?:\.[A-Za-z_]\w*)+")
_FILE_PATH = re.compile(r"(?<![\w./-])(?:glipcli|tests|benchmarks|examples)/[\w./-]*\.(?:py|json|yaml|txt|safetensors|sh)\b")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "CONTRIBUTING.md",
            ROOT / "CHANGELOG.md"]


def prose_and_code(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, line) outside fenced blocks, and inside them."""
    prose, code, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        (code if fenced else prose).append((number, line))
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    prose, _ = prose_and_code(path.read_text(encoding="utf-8"))
    for _, line in prose:
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    prose, _ = prose_and_code(path.read_text(encoding="utf-8"))
    found = []
    for number, line in prose:
        for match in _LINK.finditer(_INLINE_CODE.sub("``", line)):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            found.append((number, target))
    return found


def link_errors(path: Path) -> list[str]:
    errors = []
    for number, target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: ({target})"
        if not dest.exists():
            errors.append(f"{where} no such file")
            continue
        if anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            errors.append(f"{where} no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    return errors


def dotted_path_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def code_path_errors(path: Path) -> list[str]:
    errors = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.relative_to(ROOT)}:{number}"
        for dotted in _DOTTED.findall(line):
            if not dotted_path_exists(dotted):
                errors.append(f"{where}: {dotted} is not importable")
        for file_path in _FILE_PATH.findall(line):
            if not (ROOT / file_path).is_file():
                errors.append(f"{where}: {file_path} does not exist")
    return errors


def reachable_from_readme() -> set[Path]:
    seen, todo = set(), [ROOT / "README.md"]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file() or path.suffix != ".md":
            continue
        seen.add(path)
        for _, target in links(path):
            file_part = target.partition("#")[0]
            if file_part:
                todo.append((path.parent / file_part).resolve())
    return seen


def test_every_relative_link_and_anchor_resolves():
    errors = [e for path in doc_files() for e in link_errors(path)]
    assert not errors, "broken links in the documentation:\n" + "\n".join(errors)


def test_every_glipcli_path_in_the_docs_exists():
    errors = [e for path in doc_files() for e in code_path_errors(path)]
    assert not errors, "the documentation names code that does not exist:\n" + "\n".join(errors)


def test_every_doc_is_reachable_from_the_readme():
    reached = reachable_from_readme()
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")) if p not in reached]
    assert not missing, f"docs not reachable from README.md through links: {missing}"
    assert ROOT / "CONTRIBUTING.md" in reached and ROOT / "CHANGELOG.md" in reached


def test_checks_catch_what_they_should(tmp_path):
    assert slug("`glip detect`: detect objects") == "glip-detect-detect-objects"
    assert slug("Output schema (`--json`)") == "output-schema---json"
    assert slug("What happens when…") == "what-happens-when"
    assert dotted_path_exists("glipcli.data.coco.load_coco")
    assert not dotted_path_exists("glipcli.chunked.detect_with_spec")
    assert not dotted_path_exists("glipcli.data.coco.no_such_function")
    doc = ROOT / "docs" / "_probe_links.md"
    try:
        doc.write_text("# Probe\n\n[ok](#probe) [bad](#nope) [gone](no-such.md) [cli](cli.md#choosing-the-model)\n"
                       "```\n[in code](not-a-link.md)\n```\n`glipcli.chunked` and `glipcli/nope.py`\n",
                       encoding="utf-8")
        errors = link_errors(doc)
        assert len(errors) == 2 and "#nope" in errors[0] and "no-such.md" in errors[1], errors
        assert len(code_path_errors(doc)) == 2
    finally:
        doc.unlink()
