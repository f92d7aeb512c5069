"""The recipe: one YAML file that describes a whole build, validated before anything heavy starts.

Validation is two-level: the top-level schema here, then each source and stage entry
against the ``Params`` model its kind registered. Every problem is reported with the file,
the line and the key path, all at once, so a user fixes a recipe in one pass.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from crispedit.models import tiny_swap
from crispedit.paths import UnsafePathError, contained
from crispedit.recipe_yaml import (
    KeyPath,
    LocatedYaml,
    Problem,
    RecipeError,
    load_located,
)
from crispedit.sample import digest


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputSpec(Strict):
    """Where and how shards are written."""

    root: Path = Path(".")
    dir: Path
    shard_size: PositiveInt = 256
    image_format: Literal["png", "webp", "jpeg"] = "png"
    quality: int = Field(95, ge=1, le=100)
    png_compression: int = Field(3, ge=0, le=9)


class StageResources(Strict):
    """How Ray places one stage. Unset fields fall back to what the stage declares."""

    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    batch_size: PositiveInt | None = None
    concurrency: PositiveInt | None = None


class ExecutionSpec(Strict):
    """Where the build runs: Ray (local or a cluster) or in-process for debugging."""

    runner: Literal["ray", "local"] = "ray"
    address: str | None = None
    num_cpus: PositiveInt | None = None
    num_gpus: float | None = Field(None, ge=0)
    stages: dict[str, StageResources] = Field(default_factory=dict)


class Entry(BaseModel):
    """A source or stage entry: its kind, an optional unique name, and the kind's parameters."""

    kind: str
    name: str
    params: Any
    origin: str
    line: int | None


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    seed: int = 0
    output: OutputSpec
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    source: dict[str, Any]
    stages: list[dict[str, Any]] = Field(default_factory=list)
    filters: list[str] = Field(default_factory=list)


class BuildPlan(BaseModel):
    """A validated recipe, ready to run: entries resolved, filter chains expanded."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recipe: Recipe
    file: str
    recipe_dir: Path
    source: Entry
    stages: list[Entry]
    tiny: bool
    output_dir: Path
    fingerprint: str


def load_plan(
    path: str | os.PathLike[str],
    *,
    tiny: bool = False,
    out: str | os.PathLike[str] | None = None,
) -> BuildPlan:
    """Read, validate and resolve a recipe. Raises RecipeError naming every problem."""
    from crispedit.stages import SOURCES, STAGES  # registers every built-in kind

    recipe_path = Path(path)
    doc = load_located(recipe_path)
    if not isinstance(doc.data, dict):
        raise RecipeError([doc.problem((), "a recipe is a mapping with name, output, source and stages")])
    data = tiny_swap(doc.data) if tiny else doc.data
    problems: list[Problem] = []
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(_problems(doc, (), error)) from None

    source = _entry(doc, ("source",), recipe.source, SOURCES, problems)
    entries: list[tuple[LocatedYaml, KeyPath, dict[str, Any]]] = [
        (doc, ("stages", i), raw) for i, raw in enumerate(recipe.stages)
    ]
    for i, name in enumerate(recipe.filters):
        chain = _filter_chain(doc, ("filters", i), name, recipe_path.parent, problems)
        if chain is not None:
            chain_data = tiny_swap(chain.data) if tiny else chain.data
            entries += [(chain, ("stages", j), raw) for j, raw in enumerate(chain_data["stages"])]
    stages = [_entry(d, p, raw, STAGES, problems) for d, p, raw in entries]

    names = [s.name for s in stages if s is not None]
    for s in stages:
        if s is not None and names.count(s.name) > 1:
            problems.append(Problem(s.origin, s.line, (), f"two stages are named {s.name!r}; give one a `name:`"))
    for key in recipe.execution.stages:
        if key not in names and key not in ("source", "write"):
            problems.append(
                doc.problem(("execution", "stages", key), f"no stage is named {key!r} (stages: {', '.join(names)})")
            )

    # A recipe may come from anyone, so its output.dir must stay inside output.root; a
    # directory typed on the command line (``out``) is the user's own choice and is taken as is.
    output_dir: Path | None = None
    try:
        output_dir = Path(out).resolve() if out is not None else contained(recipe.output.root, recipe.output.dir)
    except UnsafePathError as error:
        problems.append(doc.problem(("output", "dir"), f"refused: {error}; output.dir must stay inside output.root"))

    if problems or source is None or output_dir is None or any(s is None for s in stages):
        raise RecipeError(problems)
    resolved = [s for s in stages if s is not None]
    return BuildPlan(
        recipe=recipe,
        file=str(recipe_path),
        recipe_dir=recipe_path.parent,
        source=source,
        stages=resolved,
        tiny=tiny,
        output_dir=output_dir,
        fingerprint=fingerprint(recipe, source, resolved),
    )


def fingerprint(recipe: Recipe, source: Entry, stages: list[Entry]) -> str:
    """Hash of everything that decides the samples' content, and nothing that only places them.

    Output location, shard size and execution settings are left out, so the same data gets
    the same ids on a laptop and on a cluster.
    """
    payload = {
        "name": recipe.name,
        "seed": recipe.seed,
        "source": [source.kind, _plain(source.params)],
        "stages": [[s.kind, s.name, _plain(s.params)] for s in stages],
    }
    return digest(json.dumps(payload, sort_keys=True, default=str))[:16]


def _plain(params: Any) -> Any:
    return params.model_dump(mode="json") if isinstance(params, BaseModel) else params


def _entry(
    doc: LocatedYaml,
    path: KeyPath,
    raw: Any,
    registry: dict[str, Any],
    problems: list[Problem],
) -> Entry | None:
    if not isinstance(raw, dict):
        problems.append(doc.problem(path, "expected a mapping with a `kind:` key"))
        return None
    kind = raw.get("kind")
    if kind not in registry:
        known = ", ".join(sorted(registry))
        problems.append(doc.problem((*path, "kind"), f"unknown kind {kind!r}; known kinds: {known}"))
        return None
    params = {k: v for k, v in raw.items() if k not in ("kind", "name")}
    name = raw.get("name", kind)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        problems.append(doc.problem((*path, "name"), f"a stage name is letters, digits, '.', '_' or '-': {name!r}"))
        return None
    cls = registry[kind]
    try:
        validated = cls.Params.model_validate(params, context={"recipe_dir": Path(doc.file).parent})
    except ValidationError as error:
        problems.extend(_problems(doc, path, error))
        return None
    return Entry(kind=kind, name=name, params=validated, origin=doc.file, line=doc.line_of(path))


def _filter_chain(
    doc: LocatedYaml, path: KeyPath, name: str, recipe_dir: Path, problems: list[Problem]
) -> LocatedYaml | None:
    """Find ``filters/NAME.yaml`` next to the recipe, one level up, or in the working directory."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        problems.append(doc.problem(path, f"a filter chain is named by a plain name, not {name!r}"))
        return None
    candidates = [recipe_dir / "filters", recipe_dir.parent / "filters", Path.cwd() / "filters"]
    for folder in candidates:
        file = folder / f"{name}.yaml"
        if file.is_file():
            try:
                chain = load_located(file)
            except RecipeError as error:
                problems.extend(error.problems)
                return None
            if not isinstance(chain.data, dict) or not isinstance(chain.data.get("stages"), list):
                problems.append(chain.problem((), "a filter chain is a mapping with a `stages:` list"))
                return None
            unknown = set(chain.data) - {"stages", "description"}
            for key in sorted(unknown):
                problems.append(chain.problem((key,), "unknown key (a filter chain has stages and description)"))
            return None if unknown else chain
    searched = ", ".join(str(c) for c in candidates)
    problems.append(doc.problem(path, f"no filter chain {name!r} (looked for {name}.yaml in {searched})"))
    return None


def _problems(doc: LocatedYaml, base: KeyPath, error: ValidationError) -> list[Problem]:
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
