"""The import graph reads in layers: core < models < capabilities < recipe/engine/ops/publish < cli.

Every import is counted, at module level and inside functions (a lazy import is still a
dependency), by walking the package's source with ``ast``. A module may import its own
layer or the ones below; the trainer (``mgt``) is a self-contained capability that imports
only core and models, and only the CLI and the editors (a trained model as a generator) import it. Neither modules nor packages may import
each other in a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "crispedit"

#: Top-level part of a module name (crispedit.X...) -> its layer.
LAYERS: dict[str, int] = {
    "": 0, "core": 0, "stages": 0,  # crispedit/__init__ (the version), the contract, its old import path
    "models": 1,
    "sources": 2, "instruct": 2, "classical": 2, "sdxl": 2, "dit4edit": 2, "masks": 2, "video": 2, "filters": 2, "mgt": 2,
    "editors": 2,
    "derived": 2,
    "recipe": 3, "engine": 3, "ops": 3, "publish": 3,
    "cli": 4,
}
SELF_CONTAINED = {"mgt": {"", "core", "models", "mgt"}}
#: Who may import the trainer: the CLI, and the editors (``edit_model``'s editmgt backend runs a trained model).
MGT_IMPORTERS = ("mgt", "cli", "editors")


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = module_names()


def imports_of(name: str) -> set[str]:
    """Every crispedit module ``name`` imports, anywhere in its file, resolved to a module of the package."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("crispedit") and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def part(name: str) -> str:
    pieces = name.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def test_every_package_part_has_a_layer() -> None:
    assert {part(n) for n in MODULES} <= set(LAYERS), sorted({part(n) for n in MODULES} - set(LAYERS))


def test_no_module_imports_a_layer_above_it() -> None:
    upward = [
        f"{name} (layer {LAYERS[part(name)]}) imports {target} (layer {LAYERS[part(target)]})"
        for name, targets in GRAPH.items() for target in sorted(targets)
        if LAYERS[part(target)] > LAYERS[part(name)]
    ]
    assert upward == []


def test_the_trainer_is_self_contained() -> None:
    wrong = [f"{n} imports {t}" for n, ts in GRAPH.items() for t in sorted(ts)
             if part(n) in SELF_CONTAINED and part(t) not in SELF_CONTAINED[part(n)]]
    wrong += [f"{n} imports {t}" for n, ts in GRAPH.items() for t in sorted(ts)
              if part(t) == "mgt" and part(n) not in MGT_IMPORTERS]
    assert wrong == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph, or None (depth-first search, colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_cycle() -> None:
    # a package's __init__ importing its own submodules is how a package face works, not a circle
    graph = {n: {t for t in ts if not (MODULES[n].name == "__init__.py" and t.startswith(n + "."))} for n, ts in GRAPH.items()}
    assert _cycle(graph) is None


def test_no_package_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        graph.setdefault(part(name), set()).update(part(t) for t in targets if part(t) != part(name))
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("module", ["crispedit.core.stage", "crispedit.core.source", "crispedit.stages"])
def test_the_contract_imports_no_capability_and_no_torch(module: str) -> None:
    code = (
        f"import sys, {module}; from crispedit.core.stage import STAGES; from crispedit.core.source import SOURCES; "
        "loaded = sorted(m for m in sys.modules if m.startswith('crispedit.') and m.split('.')[1] not in ('core', 'stages')); "
        "heavy = sorted(m for m in ('torch', 'ray', 'diffusers', 'transformers') if m in sys.modules); "
        "print(loaded, heavy, len(STAGES), len(SOURCES))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[] [] 0 0"
