"""What a recipe makes crispedit do beyond its own folder: the review list ``crispedit validate`` prints.

A recipe is data, but running it imports the modules it names (``plugins:``), sends prompts
and images to the endpoints it names (``llm.base_url``), and reads every file and URL it
names. docs/recipes.md ("Trust") says which of these to review in someone else's recipe;
this module finds them in a validated plan, so the review does not depend on reading YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crispedit.core.located import dotted
from crispedit.core.locations import Location, resolve_location
from crispedit.core.paths import UnsafePathError
from crispedit.core.redact import scrub_url
from crispedit.recipe import BuildPlan, Entry


@dataclass
class Reach:
    plugins: list[str] = field(default_factory=list)
    #: ``where: url (key from $VAR)`` for every model server a stage sends requests to.
    endpoints: list[str] = field(default_factory=list)
    #: ``where: location`` for every local path outside the recipe's folder, and every remote URL, that is read.
    reads: list[str] = field(default_factory=list)
    writes: str = ""

    def lines(self) -> list[str]:
        out = []
        if self.plugins:
            out.append("plugins (imported: their code runs with your rights): " + ", ".join(self.plugins))
        if self.endpoints:
            out.append("endpoints (prompts and images are sent there): " + "; ".join(self.endpoints))
        if self.reads:
            out.append("reads outside the recipe's folder: " + "; ".join(self.reads))
        out.append(f"writes: {scrub_url(self.writes)}")
        return out


def recipe_reach(plan: BuildPlan) -> Reach:
    """The plugins, endpoints and outside locations of a validated plan (filter chains expanded)."""
    folder = resolve_location(Path(plan.file).resolve().parent)
    reach = Reach(plugins=list(plan.recipe.plugins), writes=plan.output_dir)
    entries: list[tuple[str, Entry]] = [("source", plan.source)] + [(f"stages.{e.name}", e) for e in plan.stages]
    for where, entry in entries:
        if not _inside(entry.origin, folder):
            reach.reads.append(f"{where}: filter chain {entry.origin}")
        params = entry.params.model_dump(mode="json") if hasattr(entry.params, "model_dump") else dict(entry.params)
        for path, value, parent in _leaves(params):
            key = str(path[-1]) if path else ""
            name = f"{where}.{dotted(path)}"
            if key == "base_url" and isinstance(value, str):
                env = parent.get("api_key_env") if isinstance(parent, dict) else None
                reach.endpoints.append(f"{name}: {scrub_url(value)}" + (f" (key from ${env})" if env else " (no key)"))
            elif isinstance(value, str) and _outside(value, folder):
                reach.reads.append(f"{name}: {scrub_url(value)}")
    return reach


def _leaves(value: Any, path: tuple[str | int, ...] = (), parent: Any = None) -> Any:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k), value)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i), parent)
    else:
        yield path, value, parent


def _inside(file: str, folder: Location) -> bool:
    try:
        return resolve_location(Path(file)).inside(folder)
    except UnsafePathError:
        return False


def _outside(value: str, folder: Location) -> bool:
    """A string that names a remote URL, or an existing local path outside the recipe's folder."""
    if not value or "\n" in value or len(value) > 4096:
        return False
    try:
        where = resolve_location(value)
    except UnsafePathError:
        return False
    if not where.is_local:
        return "://" in value
    looks_like_path = value.startswith(("/", ".", "~", "file:", "local:")) or "/" in value or "\\" in value
    return looks_like_path and where.path is not None and where.path.exists() and not where.inside(folder)
