"""YAML reading that remembers where every key was written, so errors can name file and line.

Recipes, filter chains and the trainer's configs are read this way, and their pydantic
validation errors become :class:`Problem` lines (``file:line: key.path: message``), all of a
file's problems at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, located precisely enough to fix without reading code."""

    file: str
    line: int | None
    path: KeyPath
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = dotted(self.path)
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"


class LocatedError(ValueError):
    """A YAML file that cannot be used as written; every problem names its file, line and key."""

    title = "invalid file"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [str(p) for p in problems]
        super().__init__(f"{self.title}:\n  " + "\n  ".join(lines))


class RecipeError(LocatedError):
    """A recipe that cannot run. Raised before any model or worker starts."""

    title = "invalid recipe"


def dotted(path: KeyPath) -> str:
    """``('stages', 1, 'strength')`` -> ``stages[1].strength``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class LocatedYaml:
    """Plain data from a YAML file plus the line (1-based) of every key path in it."""

    file: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor that was written down."""
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None

    def problem(self, path: KeyPath, message: str) -> Problem:
        return Problem(self.file, self.line_of(path), path, message)


def load_located(path: Path, error: type[LocatedError] = RecipeError) -> LocatedYaml:
    """Read YAML safely (no Python tags) and record key positions; problems raise ``error``."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error([Problem(name, None, (), "file not found")]) from None
    except (OSError, UnicodeDecodeError) as failure:
        raise error([Problem(name, None, (), f"cannot read: {failure}")]) from None
    return parse_located(text, name, error)


def parse_located(text: str, name: str, error: type[LocatedError] = RecipeError) -> LocatedYaml:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as failure:
        mark = getattr(failure, "problem_mark", None) or getattr(failure, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(failure, "problem", None) or str(failure)
        raise error([Problem(name, line, (), f"not valid YAML: {problem}")]) from None
    located = LocatedYaml(name, data)
    if node is not None:
        _walk(node, (), located.lines)
    return located


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            child = (*path, key)
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines)


def validation_problems(doc: LocatedYaml, base: KeyPath, error: ValidationError) -> list[Problem]:
    """A pydantic error as located problems, in the words a person writing YAML uses ("unknown key")."""
    out = []
    for item in error.errors():
        loc: KeyPath = (*base, *item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif "input" in item and not isinstance(item["input"], (dict, list)):
            message = f"{message} (got {item['input']!r})"
        out.append(doc.problem(loc, message))
    return out
