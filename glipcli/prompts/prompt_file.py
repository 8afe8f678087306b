"""Typed prompt specs: which classes to detect, how each is phrased, what to suppress.

A `PromptSpec` comes from one of three sources, each with its own loader:

- `-p` strings: `"person. bicycle."` (names split at `.`; `-p` may be repeated);
- a classes file: one class per line, blank lines and lines starting with `#` ignored;
- a YAML prompt file (`--prompt-file`)::

      classes:
        - person                              # a bare name
        - "pothole, a dark hole in asphalt"   # shortest form: name, then context
        - name: CoW                           # display label written to outputs
          text: flat mushroom                 # grounded text (default: the name)
          prefix: ""                          # context before the text (not grounded)
          suffix: ""                          # context after the text (not grounded)
          threshold: 0.4                      # per-class score threshold (default: global)
      suppress:                               # optional: encoded, never reported
        - toy car

Shortest form: a class written as a string with a comma, `"pothole, a dark hole in asphalt"`,
is the name `pothole` (grounded) followed by the suffix `", a dark hole in asphalt"` (context):
the class contributes exactly the written string to the caption and only `pothole` is grounded.
It applies to `-p` names, classes-file lines and string entries of `classes:` alike.

The caption is the official evaluation caption in its caption-prompt form: per class
`prefix + text + suffix`, classes joined by `". "`, then each suppression phrase preceded by
`". "` (see `glipcli.prompts.caption.prompted_caption`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from glipcli.errors import GlipError, excerpt
from glipcli.io import parse_yaml
from glipcli.prompts.caption import EVAL_SEPARATOR, Phrase, prompted_caption

SHORT_FORM_SEPARATOR = ","
CLASS_KEYS = ("name", "text", "prefix", "suffix", "threshold")
TOP_LEVEL_KEYS = ("classes", "suppress")


def name_key(name: str) -> str:
    """The form class and dataset names are compared in: lower case, only letters and digits."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def official_clean_name(name: str) -> str:
    """The official evaluation's name clean-up (engine/inference.py `clean_name`).

    Removes everything from the first `(` to the last `)`, turns `_` into spaces, then
    replaces each non-overlapping pair of spaces by one space (left to right, one pass):
    `"bow_(weapon)"` -> `"bow "`, `"small_fish"` -> `"small fish"`.
    """
    name = re.sub(r"\(.*\)", "", name)
    return name.replace("_", " ").replace("  ", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClassPrompt:
    """One class of a prompt.

    name: the display label written to outputs. text: the grounded text (None = the name).
    prefix/suffix: context around the text in the caption, not grounded.
    threshold: this class's score threshold (None = the run's global threshold).
    """

    name: str
    text: str | None = None
    prefix: str = ""
    suffix: str = ""
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise GlipError(f"class name must be a string, got {type(self.name).__name__} {excerpt(self.name)}")
        if not self.name.strip():
            raise GlipError("a class name is empty or only whitespace")
        label = f"class {excerpt(self.name)}"
        if self.text is not None:
            if not isinstance(self.text, str):
                raise GlipError(f"{label}: text must be a string, got {type(self.text).__name__}")
            if not self.text.strip():
                raise GlipError(f"{label}: text is empty or only whitespace")
        for key in ("prefix", "suffix"):
            if not isinstance(getattr(self, key), str):
                raise GlipError(f"{label}: {key} must be a string, got {type(getattr(self, key)).__name__}")
        if self.threshold is not None:
            if not _is_number(self.threshold) or math.isnan(self.threshold):
                raise GlipError(f"{label}: threshold must be a number in [0, 1], got {excerpt(self.threshold)}")
            if not 0.0 <= self.threshold <= 1.0:
                raise GlipError(f"{label}: threshold {self.threshold} is outside [0, 1]")
            object.__setattr__(self, "threshold", float(self.threshold))

    @property
    def grounded_text(self) -> str:
        """The text whose tokens score this class."""
        return self.name if self.text is None else self.text

    @classmethod
    def parse(cls, written: str) -> "ClassPrompt":
        """A class as users write it: `"person"`, or the shortest form `"name, description"`.

        The string is stripped; the name is what precedes the first comma (right-stripped) and
        the suffix is everything after the name, so `prefix + name + suffix` is the written
        string: `"pothole, a dark hole"` -> name `"pothole"`, suffix `", a dark hole"`.
        """
        if not isinstance(written, str):
            raise GlipError(f"a class must be written as a string, got {type(written).__name__} {excerpt(written)}")
        written = written.strip()
        comma = written.find(SHORT_FORM_SEPARATOR)
        if comma < 0:
            return cls(name=written)
        name = written[:comma].rstrip()
        if not name:
            raise GlipError(f"class {excerpt(written)}: no name before the comma")
        return cls(name=name, suffix=written[len(name):])

    def short_form(self) -> str | None:
        """The string that `parse` turns back into this class, or None if there is none."""
        if self.text is not None or self.prefix or self.threshold is not None:
            return None
        written = self.name + self.suffix
        try:
            return written if ClassPrompt.parse(written) == self else None
        except GlipError:
            return None

    def to_entry(self) -> str | dict[str, Any]:
        """The YAML entry: the short form where one exists, else a mapping of non-default fields."""
        short = self.short_form()
        if short is not None:
            return short
        entry: dict[str, Any] = {"name": self.name}
        if self.text is not None:
            entry["text"] = self.text
        if self.prefix:
            entry["prefix"] = self.prefix
        if self.suffix:
            entry["suffix"] = self.suffix
        if self.threshold is not None:
            entry["threshold"] = self.threshold
        return entry


@dataclass(frozen=True)
class SpecCaption:
    """A spec's caption. classes[i] is the grounded span of class i; suppress[j] the span of
    suppression phrase j (both character spans into `caption`)."""

    caption: str
    classes: list[Phrase]
    suppress: list[Phrase]

    @property
    def phrases(self) -> list[Phrase]:
        """Class phrases, then suppression phrases: the phrase order of an encoded prompt."""
        return self.classes + self.suppress


@dataclass
class PromptSpec:
    """The classes of a detection prompt and the suppression phrases.

    classes: at least one, names unique (they are the output labels).
    suppress: phrases encoded in the caption whose detections are never reported.
    """

    classes: list[ClassPrompt]
    suppress: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.classes, (str, bytes)) or not isinstance(self.classes, Sequence):
            raise GlipError("classes must be a list of ClassPrompt")
        self.classes = list(self.classes)
        if not self.classes:
            raise GlipError("no classes given: the prompt needs at least one class")
        for i, cls in enumerate(self.classes):
            if not isinstance(cls, ClassPrompt):
                raise GlipError(f"class #{i + 1} is not a ClassPrompt: {excerpt(cls)}")
        seen: dict[str, int] = {}
        for i, cls in enumerate(self.classes):
            if cls.name in seen:
                raise GlipError(f"duplicate class name {excerpt(cls.name)} "
                                f"(classes #{seen[cls.name] + 1} and #{i + 1})")
            seen[cls.name] = i
        if isinstance(self.suppress, (str, bytes)) or not isinstance(self.suppress, Sequence):
            raise GlipError("suppress must be a list of phrases")
        self.suppress = list(self.suppress)
        grounded = {cls.grounded_text for cls in self.classes} | set(seen)
        for j, phrase in enumerate(self.suppress):
            if not isinstance(phrase, str):
                raise GlipError(f"suppression phrase #{j + 1} must be a string, "
                                f"got {type(phrase).__name__} {excerpt(phrase)}")
            if not phrase.strip():
                raise GlipError(f"suppression phrase #{j + 1} is empty or only whitespace")
            if phrase in grounded:
                raise GlipError(f"suppression phrase {excerpt(phrase)} is also a class: a phrase cannot be both")
            if phrase in self.suppress[:j]:
                raise GlipError(f"duplicate suppression phrase {excerpt(phrase)}")

    # -- views ---------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [cls.name for cls in self.classes]

    def caption(self, separator: str = EVAL_SEPARATOR) -> SpecCaption:
        """The caption and spans (official caption-prompt form, suppression phrases last)."""
        caption, classes, suppress = prompted_caption(
            [(cls.prefix, cls.grounded_text, cls.suffix) for cls in self.classes], self.suppress, separator)
        return SpecCaption(caption=caption, classes=classes, suppress=suppress)

    def subset(self, class_indices: Sequence[int]) -> "PromptSpec":
        """The spec restricted to some classes (in the given order), same suppression phrases."""
        return PromptSpec(classes=[self.classes[i] for i in class_indices], suppress=list(self.suppress))

    # -- YAML ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"classes": [cls.to_entry() for cls in self.classes]}
        if self.suppress:
            data["suppress"] = list(self.suppress)
        return data

    def to_yaml(self, header: str | None = None) -> str:
        """YAML text that `from_yaml_text` loads back into an equal spec; `header` becomes
        leading `#` comment lines."""
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=1 << 16)
        if _spec_from_data(yaml.safe_load(body)) != self:
            # Raw Unicode line breaks (U+0085, U+2028, ...) inside quoted scalars read back as
            # folded spaces; escaping every non-ASCII character keeps them exact.
            body = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=False, width=1 << 16)
        if header is None:
            return body
        comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
        return comment + body

    @classmethod
    def from_dict(cls, data: Any, source: str = "prompt") -> "PromptSpec":
        """Build from parsed YAML, naming `source` and the offending entry in every error."""
        try:
            return _spec_from_data(data)
        except GlipError as exc:
            raise GlipError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "prompt file") -> "PromptSpec":
        return cls.from_dict(parse_yaml(text, source), source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PromptSpec":
        """Load a `--prompt-file`."""
        return cls.from_yaml_text(_read_text(path, "prompt file"), source=str(path))

    # -- class lists ---------------------------------------------------------------------------
    @classmethod
    def from_names(cls, names: Sequence[str], clean_names: bool = False,
                   suppress: Sequence[str] = ()) -> "PromptSpec":
        """Classes from names used verbatim (no short-form parsing).

        clean_names: ground `official_clean_name(name)` (as the official evaluation does for
        dataset category names: `"small_fish"` -> `"small fish"`) while keeping the name as label.
        """
        if isinstance(names, str):
            raise GlipError("class names must be a list of names, not a single string")
        classes = []
        for name in names:
            cleaned = official_clean_name(name) if clean_names and isinstance(name, str) else name
            classes.append(ClassPrompt(name=name, text=None if cleaned == name else cleaned))
        return cls(classes=classes, suppress=list(suppress))

    @classmethod
    def from_prompts(cls, prompts: str | Sequence[str]) -> "PromptSpec":
        """`-p` values: each split at `.`, pieces stripped, empty pieces dropped, every piece
        parsed with `ClassPrompt.parse` (so `"pothole, a dark hole"` is the shortest form)."""
        parts = [prompts] if isinstance(prompts, str) else list(prompts)
        written = [piece.strip() for part in parts for piece in str(part).split(".")]
        written = [w for w in written if w]
        if not written:
            raise GlipError('empty prompt: give at least one class name, e.g. -p "person. bicycle."')
        return cls(classes=[ClassPrompt.parse(w) for w in written])

    @classmethod
    def from_classes_file(cls, path: str | Path, clean_names: bool = False) -> "PromptSpec":
        """One class per line (`ClassPrompt.parse`); blank lines and `#` comment lines ignored.

        clean_names: ground `official_clean_name(name)`, as in `from_names`.
        """
        classes = []
        for number, line in enumerate(_read_text(path, "classes file").splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                parsed = ClassPrompt.parse(line)
                cleaned = official_clean_name(parsed.name) if clean_names else parsed.name
                if cleaned != parsed.name:
                    parsed = ClassPrompt(name=parsed.name, text=cleaned, suffix=parsed.suffix)
                classes.append(parsed)
            except GlipError as exc:
                raise GlipError(f"{path}: line {number}: {exc}") from None
        if not classes:
            raise GlipError(f"{path}: no class names in the file")
        try:
            return cls(classes=classes)
        except GlipError as exc:
            raise GlipError(f"{path}: {exc}") from None


def load_prompt_spec(prompts: Sequence[str] | None = None, classes_file: str | Path | None = None,
                     prompt_file: str | Path | None = None) -> PromptSpec:
    """The spec of exactly one source: `-p` strings, a classes file or a YAML prompt file."""
    given = [flag for flag, value in (("-p/--prompt", prompts), ("--classes-file", classes_file),
                                      ("--prompt-file", prompt_file)) if value]
    if not given:
        raise GlipError("no classes given: pass -p/--prompt, --classes-file or --prompt-file")
    if len(given) > 1:
        raise GlipError(f"give the classes one way only, not {' and '.join(given)}")
    if prompt_file:
        return PromptSpec.from_yaml(prompt_file)
    if classes_file:
        return PromptSpec.from_classes_file(classes_file)
    return PromptSpec.from_prompts(list(prompts or []))


# -- validation of parsed YAML -------------------------------------------------------------------
def _read_text(path: str | Path, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise GlipError(f"{path}: no such {what}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GlipError(f"{path}: {what} is not UTF-8 text") from None
    except OSError as exc:
        raise GlipError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def _type_name(value: Any) -> str:
    return "nothing (null)" if value is None else type(value).__name__


def _check_keys(data: Mapping, allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise GlipError(f"{where}unknown key {excerpt(key)} (allowed: {', '.join(allowed)})")


def _class_from_mapping(entry: Mapping, where: str) -> ClassPrompt:
    _check_keys(entry, CLASS_KEYS, where)
    if "name" not in entry:
        raise GlipError(f"{where}missing 'name'")
    for key in ("name", "text", "prefix", "suffix"):
        if key in entry and not isinstance(entry[key], str) and not (key == "text" and entry[key] is None):
            hint = " (quote it)" if _is_number(entry[key]) or isinstance(entry[key], bool) else ""
            raise GlipError(f"{where}{key} must be a string, "
                            f"got {_type_name(entry[key])} {excerpt(entry[key])}{hint}")
    threshold = entry.get("threshold")
    if threshold is not None and not _is_number(threshold):
        raise GlipError(f"{where}threshold must be a number in [0, 1], "
                        f"got {_type_name(threshold)} {excerpt(threshold)}")
    kwargs = {f.name: entry[f.name] for f in fields(ClassPrompt) if f.name in entry}
    try:
        return ClassPrompt(**kwargs)
    except GlipError as exc:
        raise GlipError(f"{where}{exc}") from None


def _spec_from_data(data: Any) -> PromptSpec:
    if not isinstance(data, Mapping):
        raise GlipError(f"expected a mapping with a 'classes' list at the top level, got {_type_name(data)}")
    _check_keys(data, TOP_LEVEL_KEYS, "")
    if "classes" not in data:
        raise GlipError("missing 'classes' (a list of class names or mappings)")
    entries = data["classes"]
    if not isinstance(entries, list):
        raise GlipError(f"'classes' must be a list, got {_type_name(entries)}")
    if not entries:
        raise GlipError("'classes' is empty: the prompt needs at least one class")
    classes = []
    for i, entry in enumerate(entries):
        where = f"classes[{i}]: "
        if isinstance(entry, str):
            try:
                classes.append(ClassPrompt.parse(entry))
            except GlipError as exc:
                raise GlipError(f"{where}{exc}") from None
        elif isinstance(entry, Mapping):
            classes.append(_class_from_mapping(entry, where))
        else:
            hint = " (quote it)" if _is_number(entry) or isinstance(entry, bool) else ""
            raise GlipError(f"{where}must be a class name or a mapping with 'name', "
                            f"got {_type_name(entry)} {excerpt(entry)}{hint}")
    suppress = data.get("suppress", [])
    if suppress is None:
        suppress = []
    if not isinstance(suppress, list):
        raise GlipError(f"'suppress' must be a list of phrases, got {_type_name(suppress)}")
    for j, phrase in enumerate(suppress):
        if not isinstance(phrase, str):
            raise GlipError(f"suppress[{j}]: must be a string, got {_type_name(phrase)} {excerpt(phrase)}")
    return PromptSpec(classes=classes, suppress=suppress)
