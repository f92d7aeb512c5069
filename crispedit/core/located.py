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


#: Bounds that keep a hostile recipe from exhausting the machine (crispedit.core.limits explains why bounds).
MAX_RECIPE_BYTES = 4 * 1024**2
#: Nodes the document may hold once every alias is expanded (a real recipe has hundreds).
MAX_NODES = 100_000
MAX_DEPTH = 64


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses, at the offending alias and line, what would explode later.

    Aliases share one node in the composed graph, so a "billion laughs" document is small
    there and only explodes when something walks it (validation, hashing, this module's
    own line index). Composing counts the size each alias would expand to (memoised per
    node, so counting stays linear), refuses an alias to a node still being composed (a
    self-reference, which would recurse forever), and refuses nesting deeper than MAX_DEPTH.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}
        self._total = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                # a collection gets its end mark once its last child is composed: until then an alias to it is inside it
                if target.end_mark is None:
                    raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} refers to itself (a recursive alias)",
                                                      event.start_mark)
                self._total += self._size(target)
                if self._total > MAX_NODES:
                    raise yaml.composer.ComposerError(None, None, f"aliases expand past {MAX_NODES:,} nodes (a YAML alias bomb?)",
                                                      event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        self._total += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        if self._total > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES:,} nodes", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _size(self, node: yaml.Node) -> int:
        """Nodes ``node`` stands for with every alias inside it expanded.

        Memoised: every alias target was sized when its alias was read, so the recursion
        only descends through nodes written out in full (at most MAX_DEPTH deep).
        """
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(self._size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(self._size(k) + self._size(v) for k, v in node.value)
        self._sizes[id(node)] = total
        return total


def load_located(path: Path, error: type[LocatedError] = RecipeError) -> LocatedYaml:
    """Read YAML safely (no Python tags, bounded size and expansion) and record key positions; problems raise ``error``."""
    from crispedit.core.storage import InputRefused, read_input

    name = str(path)
    try:
        text = read_input(Path(path), MAX_RECIPE_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise error([Problem(name, None, (), "file not found")]) from None
    except InputRefused as refused:
        raise error([Problem(name, None, (), f"cannot read: {refused}")]) from None
    except (OSError, UnicodeDecodeError) as failure:
        raise error([Problem(name, None, (), f"cannot read: {failure}")]) from None
    return parse_located(text, name, error)


def parse_located(text: str, name: str, error: type[LocatedError] = RecipeError) -> LocatedYaml:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as failure:
        mark = getattr(failure, "problem_mark", None) or getattr(failure, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(failure, "problem", None) or str(failure)
        raise error([Problem(name, line, (), f"not valid YAML: {problem}")]) from None
    except RecursionError:
        raise error([Problem(name, None, (), f"not valid YAML: nested too deeply (more than {MAX_DEPTH} levels)")]) from None
    finally:
        loader.dispose()
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
