"""recipe/catalog.py is the one list of built-in kinds: it lists every module that registers one, and loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.test_layers import GRAPH, MODULES


def registering_modules() -> set[str]:
    """Modules of the package with a class decorated by register_stage or register_source."""
    found = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for decorator in node.decorator_list:
                    if isinstance(decorator, ast.Name) and decorator.id in ("register_stage", "register_source"):
                        found.add(name)
    return found


def test_the_catalog_imports_every_module_that_registers_a_kind() -> None:
    kinds = registering_modules()
    assert len(kinds) > 20
    assert kinds - GRAPH["crispedit.recipe.catalog"] == set()


def test_no_one_but_the_recipe_engine_ops_and_cli_import_the_catalog() -> None:
    users = {name for name, targets in GRAPH.items() if "crispedit.recipe.catalog" in targets}
    assert {u.split(".")[1] for u in users} <= {"recipe", "engine", "ops", "cli"}


def test_loading_every_kind_loads_no_torch() -> None:
    """Stage modules import torch in setup() and their calls only, so `crispedit validate` stays instant."""
    code = ("import sys; from crispedit.recipe.catalog import STAGES, SOURCES; "
            "print(len(STAGES), len(SOURCES), sorted(m for m in ('torch', 'ray', 'diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    stages, sources, heavy = done.stdout.split(" ", 2)
    assert int(stages) >= 22 and int(sources) >= 8 and heavy.strip() == "[]"
