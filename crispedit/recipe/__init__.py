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

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from crispedit.core.limits import MAX_SHARD_SIZE
from crispedit.core.located import (
    KeyPath,
    LocatedYaml,
    Problem,
    RecipeError,
    load_located,
    validation_problems,
)
from crispedit.core.locations import Location, resolve_location
from crispedit.core.paths import UnsafePathError
from crispedit.core.presets import BUNDLED, PresetNotFound, find_preset
from crispedit.core.sample import digest
from crispedit.core.storage import is_url
from crispedit.models.spec import tiny_swap
from crispedit.models.terms import TermsDeclaration, check_declarations, model_key


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputSpec(Strict):
    """Where and how shards are written."""

    root: str | None = Field(
        None, description="a folder inside the output root (`CRISPEDIT_OUTPUT_ROOT`, default the working directory) that `dir` must stay "
        "in; it can narrow the root, never widen it",
    )
    dir: str = Field(
        description="the output directory, relative to the output root; it must resolve inside it by every spelling "
        "(`..`, absolute paths, symlinks, `file://`, `local://` out are refused). `--out` replaces it",
    )
    shared: bool = Field(False, description="the local `dir` is on storage every node of a Ray cluster mounts (NFS, Lustre): allow it on a multi-node cluster")
    shard_size: int = Field(256, ge=1, le=MAX_SHARD_SIZE, description="source items per shard; shard names come from their item range")
    image_format: Literal["png", "webp", "jpeg"] = Field("png", description="encoding of images in the shards (masks stay PNG)")
    quality: int = Field(95, ge=1, le=100, description="JPEG quality; WebP is lossless at 100, lossy below")
    png_compression: int = Field(3, ge=0, le=9, description="zlib level for PNG (3 is about as small as 9 on photos, and faster)")
    reject_images: bool = Field(True, description="keep the images of rejected samples in rejects/ (so refilter can restore them)")


class StageResources(Strict):
    """How Ray places one stage. Unset fields fall back to what the stage class declares."""

    num_cpus: float | None = Field(None, ge=0, description="CPUs per task or actor (default: the stage's declaration)")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per actor; fractions share a GPU (default: the stage's declaration)")
    memory_gb: float | None = Field(None, gt=0, description="memory Ray reserves per task or actor, in GiB")
    gpu_memory_gb: float | None = Field(
        None, gt=0, description="GPU memory one actor holds, in GiB (models and activations; default: the stage's declaration): "
        "actors that may share one GPU must fit in its memory, or the build is refused before any model loads",
    )
    seconds_per_item: float | None = Field(
        None, gt=0, description="the stage's seconds per source item on one actor (its fan-out and the filters before it included; "
        "`crispedit plan --sample` prints it as s/source): on GPUs the plan sizes the model stages' pools in proportion, "
        "so that the GPUs go to the slow stage",
    )
    batch_size: PositiveInt | None = Field(None, description="samples per call of the stage (default: the stage's declaration)")
    concurrency: PositiveInt | None = Field(None, description="a fixed number of actors for a model stage")
    min_actors: PositiveInt | None = Field(None, description="autoscaling actor pool: at least this many actors")
    max_actors: PositiveInt | None = Field(None, description="autoscaling actor pool: at most this many actors")

    @model_validator(mode="after")
    def _pool(self) -> StageResources:
        if self.concurrency is not None and (self.min_actors is not None or self.max_actors is not None):
            raise ValueError("give either concurrency (a fixed pool) or min_actors/max_actors (an autoscaling one)")
        if self.min_actors is not None and self.max_actors is not None and self.min_actors > self.max_actors:
            raise ValueError(f"min_actors ({self.min_actors}) is above max_actors ({self.max_actors})")
        return self


class ExecutionSpec(Strict):
    """Where the build runs: Ray (local or a cluster) or in-process for debugging."""

    runner: Literal["ray", "local"] = Field("ray", description="`local` runs the same stage classes in-process, for debugging")
    address: str | None = Field(None, description="a Ray cluster to join (`auto`, `ray://host:10001`); else Ray starts locally")
    num_cpus: PositiveInt | None = Field(None, description="CPUs of a locally started Ray (default: all)")
    num_gpus: float | None = Field(None, ge=0, description="GPUs of a locally started Ray (default: all)")
    breaker_min_failures: PositiveInt = Field(3, description="the breaker needs at least this many failures of one exception type")
    breaker_fraction: float = Field(0.5, gt=0, le=1, description="...on at least this fraction of a batch, to stop the build")
    stages: dict[str, StageResources] = Field(default_factory=dict, description="per-stage placement, keyed by stage name")
    gpu_memory_gb: float | None = Field(
        None, gt=0, description="memory of one GPU in GiB for the sharing check (default: the driver's CUDA device; set it to plan for another machine)",
    )
    share_gpus: bool = Field(
        True, description="when the model stages want more whole GPUs than the cluster has, give them fractional GPUs (false: refuse)",
    )
    stall_timeout_s: float = Field(
        600, ge=0, description="stop a Ray build when no item advances for this many seconds while work is pending (0: never)",
    )


class Entry(BaseModel):
    """A source or stage entry: its kind, an optional unique name, and the kind's parameters."""

    kind: str
    name: str
    params: Any
    origin: str
    line: int | None


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the build's name (letters, digits, `.`, `_`, `-`); part of the fingerprint")
    description: str = Field("", description="free text; the dataset card's summary")
    license: str | None = Field(None, description="the dataset's licence (an SPDX id such as `cc-by-4.0`), for the dataset card")
    terms: dict[str, TermsDeclaration] = Field(
        default_factory=dict, description="licence and output-use terms by model id (no revision; an endpoint's model name): "
        "declare a model's, or override what crispedit records (below); the card states them and publish checks `license` against them",
    )
    seed: int = Field(0, description="root of every per-item seed; part of the fingerprint")
    output: OutputSpec = Field(description="where and how shards are written (below)")
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec, description="where the build runs (below)")
    source: dict[str, Any] = Field(description="where items come from: a mapping with `kind:` (source kinds below)")
    stages: list[dict[str, Any]] = Field(default_factory=list, description="run in order on every item: mappings with `kind:` (stage kinds below), or `include: CHAIN`")
    filters: list[str] = Field(default_factory=list, description="filter chains by name (`filters/NAME.yaml` beside the recipe, or a bundled one: basic, ip2p, ultraedit, mllm_judge), appended after `stages`")
    plugins: list[str] = Field(default_factory=list, description="Python modules to import first; they register stage and source kinds of their own")


class BuildPlan(BaseModel):
    """A validated recipe, ready to run: entries resolved, filter chains expanded."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recipe: Recipe
    file: str
    recipe_dir: Path
    source: Entry
    stages: list[Entry]
    tiny: bool
    #: A resolved local directory or an object-store URL.
    output_dir: str
    fingerprint: str
    #: Where LLM answers and other per-request caches live; shared by ``--until`` previews.
    cache_root: Path | None = None
    #: ``--until``: the full build's output, which holds this one under until/STAGE.
    parent_output: str | None = None

    @property
    def cache_dir(self) -> Path:
        """Always a local directory: next to a local output, or per build in the working directory."""
        if self.cache_root is not None:
            return self.cache_root
        if is_url(self.output_dir):
            return Path(".crispedit-cache") / f"{self.recipe.name}-{self.fingerprint}"
        return Path(self.output_dir) / ".cache"


def load_plan(
    path: str | os.PathLike[str],
    *,
    tiny: bool = False,
    out: str | os.PathLike[str] | None = None,
) -> BuildPlan:
    """Read, validate and resolve a recipe. Raises RecipeError naming every problem."""
    recipe_path = Path(path)
    doc = load_located(recipe_path)  # before the stage kinds are imported: a hostile file is refused at once
    from crispedit.recipe.catalog import SOURCES, STAGES  # registers every built-in kind

    if not isinstance(doc.data, dict):
        raise RecipeError([doc.problem((), "a recipe is a mapping with name, output, source and stages")])
    data = tiny_swap(doc.data) if tiny else doc.data
    problems: list[Problem] = []
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(validation_problems(doc, (), error)) from None
    plugin_problems = import_plugins(recipe.plugins)
    if plugin_problems:
        raise RecipeError([doc.problem(("plugins", i), message) for i, message in plugin_problems])

    source = _entry(doc, ("source",), recipe.source, SOURCES, problems)
    entries: list[tuple[LocatedYaml, KeyPath, dict[str, Any]]] = []

    def include(path: KeyPath, name: Any) -> None:
        chain = _filter_chain(doc, path, name, recipe_path.parent, problems)
        if chain is not None:
            chain_data = tiny_swap(chain.data) if tiny else chain.data
            entries.extend((chain, ("stages", j), raw) for j, raw in enumerate(chain_data["stages"]))

    for i, raw in enumerate(recipe.stages):
        if isinstance(raw, dict) and "include" in raw:  # a filter chain in the middle of the stages
            extra = sorted(set(raw) - {"include"})
            if extra:
                problems.append(doc.problem(("stages", i, extra[0]), "an `include:` entry has no other keys"))
            include(("stages", i, "include"), raw["include"])
        else:
            entries.append((doc, ("stages", i), raw))
    for i, name in enumerate(recipe.filters):
        include(("filters", i), name)
    stages = [_entry(d, p, raw, STAGES, problems) for d, p, raw in entries]
    if source is not None and all(s is not None for s in stages):
        problems += _check_data_flow(source, [s for s in stages if s is not None], SOURCES, STAGES)
        if not tiny:  # a --tiny build runs twins, some of which report no model id for a key to match
            problems += _check_terms_keys(doc, recipe, [s for s in stages if s is not None], STAGES)
    problems += [doc.problem(("terms", key), message) for key, message in check_declarations(recipe.terms)]

    names = [s.name for s in stages if s is not None]
    for s in stages:
        if s is not None and names.count(s.name) > 1:
            problems.append(Problem(s.origin, s.line, (), f"two stages are named {s.name!r}; give one a `name:`"))
    for key in recipe.execution.stages:
        if key not in names and key not in ("source", "write"):
            problems.append(
                doc.problem(("execution", "stages", key), f"no stage is named {key!r} (stages: {', '.join(names)})")
            )

    output_dir: str | None = None
    try:
        output_dir = resolve_output(recipe.output, out)
    except OutputOutside as error:
        problems.append(doc.problem(error.key, str(error)))

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


#: The environment variable that sets where recipes may write (a folder or an object-store URL).
OUTPUT_ROOT_ENV = "CRISPEDIT_OUTPUT_ROOT"


class OutputOutside(ValueError):
    """A recipe's output location that leaves the output root; ``key`` is where the recipe says it."""

    def __init__(self, key: KeyPath, message: str) -> None:
        self.key = key
        super().__init__(message)


def output_root() -> Location:
    """Where recipes may write: ``$CRISPEDIT_OUTPUT_ROOT`` (a folder or a URL), else the working directory."""
    return resolve_location(os.environ.get(OUTPUT_ROOT_ENV) or ".")


def resolve_output(spec: OutputSpec, out: str | os.PathLike[str] | None = None) -> str:
    """The build's output location: ``out`` (typed by the user) as is, else the recipe's ``dir`` inside the root.

    A recipe may come from anyone, so it cannot choose where the root is (only the command
    line and the environment can), and whatever spelling its ``root`` and ``dir`` use, they
    are resolved by :func:`resolve_location` and must land inside the root. Raises OutputOutside.
    """
    if out is not None:
        try:
            where = resolve_location(out)
        except UnsafePathError as error:
            raise OutputOutside(("output", "dir"), f"--out: {error}") from None
        if where.chained:
            raise OutputOutside(("output", "dir"), f"--out {out}: an output is a folder or a plain URL, not an fsspec chain")
        return where.url
    root = output_root()
    hint = f"pass --out, or set {OUTPUT_ROOT_ENV}"
    inner = root
    try:
        if spec.root is not None:
            inner = resolve_location(spec.root, base=root)
            if inner.chained or not inner.inside(root):
                raise OutputOutside(("output", "root"), f"refused: {spec.root} is outside the output root {root.url}; "
                                    f"a recipe can narrow the root, not move it ({hint})")
        where = resolve_location(spec.dir, base=inner)
    except UnsafePathError as error:
        raise OutputOutside(("output", "dir"), f"refused: {error}") from None
    if where.chained or not where.inside(inner) or where.same(inner):
        raise OutputOutside(("output", "dir"), f"refused: {spec.dir} is outside the output root {inner.url}; "
                            f"output.dir must stay inside it ({hint})")
    return where.url.rstrip("/") if not where.is_local else where.url


def _check_data_flow(source: Entry, stages: list[Entry], sources: dict[str, Any], registry: dict[str, Any]) -> list[Problem]:
    """Each stage's declared inputs must come from the source or an earlier stage, named at the stage's line."""
    from crispedit.core.stage import BuildContext

    context = BuildContext(recipe_name="validate", fingerprint="", seed=0)
    available = set(sources[source.kind](source.params, context).outputs())
    problems = []
    for entry in stages:
        stage = registry[entry.kind](entry.params, context, name=entry.name)
        missing = sorted(stage.inputs() - available)
        if missing:
            have = ", ".join(sorted(available)) or "nothing"
            problems.append(Problem(
                entry.origin, entry.line, (),
                f"stage {entry.name!r} needs {', '.join(missing)}, which neither the source nor an earlier stage provides (available: {have})",
            ))
        available |= stage.outputs() | {f"score.{c}" for c in stage.score_columns()}
    return problems


def _check_terms_keys(doc: LocatedYaml, recipe: Recipe, stages: list[Entry], registry: dict[str, Any]) -> list[Problem]:
    """A ``terms:`` key must name a model a stage uses: a misspelt one would leave the real terms in force unseen."""
    from crispedit.core.stage import BuildContext

    if not recipe.terms:
        return []
    context = BuildContext(recipe_name="validate", fingerprint="", seed=0)
    used = sorted({model_key(m) for e in stages for m in registry[e.kind](e.params, context, name=e.name).model_ids().values()})
    return [doc.problem(("terms", key), f"no stage uses model {key!r} (models: {', '.join(used) or 'none'})")
            for key in recipe.terms if key not in used and model_key(key) == key]


def import_plugins(modules: list[str]) -> list[tuple[int, str]]:
    """Import the modules a recipe names, which register their own stage and source kinds."""
    import importlib

    problems = []
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as error:  # any failure to import is the recipe's problem, reported at its line
            problems.append((i, f"cannot import plugin {module!r}: {type(error).__name__}: {error}"))
    return problems


def plan_until(plan: BuildPlan, stage: str) -> BuildPlan:
    """The stages up to and including ``stage``, written to OUT/until/STAGE.

    The fingerprint (hence every id and seed) and the cache stay the full build's, so a
    later full build answers the same requests from the cache.
    """
    names = [s.name for s in plan.stages]
    if stage not in names:
        raise ValueError(f"no stage is named {stage!r} (stages: {', '.join(names)})")
    return plan.model_copy(update={
        "stages": plan.stages[: names.index(stage) + 1],
        "output_dir": f"{plan.output_dir.rstrip('/')}/until/{stage}",
        "cache_root": plan.cache_dir,
        "parent_output": plan.output_dir,
    })


def freeze_plan(plan: BuildPlan) -> str:
    """A plan as a small JSON string: what Ray actors are constructed from (no object-store arguments)."""
    return plan.model_dump_json()


def thaw_plan(text: str) -> BuildPlan:
    """The inverse of :func:`freeze_plan`: entries' params re-validated into their kinds' models."""
    from crispedit.recipe.catalog import SOURCES, STAGES

    plan = BuildPlan.model_validate_json(text)
    import_plugins(plan.recipe.plugins)
    plan.source.params = SOURCES[plan.source.kind].Params.model_validate(plan.source.params)
    for entry in plan.stages:
        entry.params = STAGES[entry.kind].Params.model_validate(entry.params)
    return plan


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
        problems.extend(validation_problems(doc, path, error))
        return None
    return Entry(kind=kind, name=name, params=validated, origin=doc.file, line=doc.line_of(path))


def _filter_chain(
    doc: LocatedYaml, path: KeyPath, name: str, recipe_dir: Path, problems: list[Problem]
) -> LocatedYaml | None:
    """Find chain NAME in ``filters/`` next to the recipe, one level up, in the working directory, or crispedit's own."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        problems.append(doc.problem(path, f"a filter chain is named by a plain name, not {name!r}"))
        return None
    candidates = chain_folders(recipe_dir)
    try:
        file = find_preset("filters", name, candidates, paths=False)
    except PresetNotFound:
        searched = ", ".join(str(c) for c in [*candidates, BUNDLED / "filters"])
        problems.append(doc.problem(path, f"no filter chain {name!r} (looked for {name}.yaml in {searched})"))
        return None
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


def chain_folders(recipe_dir: Path) -> list[Path]:
    """Where a project's own filter chains and prompts are looked for before the bundled presets."""
    return [recipe_dir / "filters", recipe_dir.parent / "filters", Path.cwd() / "filters"]
