"""From a plan to what the workers need: stages built from entries, placement, build metadata, Ray steps.

Everything here runs on the driver (and again in workers from the frozen plan); nothing
here runs a stage.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from crispedit import __version__
from crispedit.core.failures import Breaker
from crispedit.core.shards import ShardStore
from crispedit.core.source import Source
from crispedit.core.stage import BuildContext, Stage
from crispedit.engine.cluster import alive_nodes
from crispedit.engine.resources import ResourcePlan, StepReservation, make_plan
from crispedit.recipe import BuildPlan, Entry
from crispedit.recipe.catalog import SOURCES, STAGES

log = logging.getLogger("crispedit")

class BuildError(RuntimeError):
    """A build that must not start, e.g. an output directory that holds a different build."""


SOURCE, WRITE = "source", "write"
Step = str | int


def context_for(plan: BuildPlan) -> BuildContext:
    return BuildContext(
        recipe_name=plan.recipe.name,
        fingerprint=plan.fingerprint,
        seed=plan.recipe.seed,
        tiny=plan.tiny,
        recipe_dir=plan.recipe_dir,
        cache_dir=plan.cache_dir,
    )


def make_source(plan: BuildPlan, context: BuildContext) -> Source:
    return SOURCES[plan.source.kind](plan.source.params, context)


def make_stage(entry: Entry, context: BuildContext) -> Stage:
    return STAGES[entry.kind](entry.params, context, name=entry.name)


@dataclass(frozen=True)
class Placement:
    """Where one stage runs and how much it takes: its class's declaration, overridden by the recipe."""

    batch_size: int
    num_cpus: float
    num_gpus: float
    memory_gb: float | None
    actors: tuple[int, int]
    gpu_memory_gb: float | None = None
    seconds_per_item: float | None = None
    #: The recipe set the pool's size (concurrency, min_actors or max_actors); else the plan sizes it.
    sized: bool = False


def placement(plan: BuildPlan, entry: Entry) -> Placement:
    cls = STAGES[entry.kind]
    r = plan.recipe.execution.stages.get(entry.name)
    declared = cls.resources
    if r is not None and r.concurrency:
        actors = (r.concurrency, r.concurrency)
    elif r is not None and (r.min_actors or r.max_actors):
        low = r.min_actors or 1
        actors = (low, max(low, r.max_actors or low))
    else:
        actors = (1, 1)
    sized = r is not None and bool(r.concurrency or r.min_actors or r.max_actors)
    return Placement(
        batch_size=(r.batch_size if r and r.batch_size else cls.default_batch_size),
        num_cpus=(r.num_cpus if r and r.num_cpus is not None else declared.num_cpus),
        num_gpus=(r.num_gpus if r and r.num_gpus is not None else declared.num_gpus),
        memory_gb=(r.memory_gb if r and r.memory_gb is not None else declared.memory_gb),
        actors=actors,
        gpu_memory_gb=(r.gpu_memory_gb if r and r.gpu_memory_gb is not None else declared.gpu_memory_gb),
        seconds_per_item=r.seconds_per_item if r else None,
        sized=sized,
    )


@dataclass(frozen=True)
class BuildMeta:
    """What every worker needs to know about the build, computed once on the driver."""

    score_columns: list[str]
    provenance: dict[str, Any]
    stage_order: list[str]
    breaker: Breaker
    #: The driver's working directory: a recipe's relative paths mean the same on every worker.
    workdir: str = ""


def plan_stages(plan: BuildPlan) -> list[Stage]:
    """The plan's stages constructed but never set up (no model loaded): what they declare, for metadata."""
    context = context_for(plan)
    return [make_stage(e, context) for e in plan.stages]


def build_meta(plan: BuildPlan) -> BuildMeta:
    stages = plan_stages(plan)
    columns: list[str] = []
    for stage in stages:
        columns += [c for c in stage.score_columns() if c not in columns]
    provenance = {
        "recipe": plan.recipe.name,
        "recipe_hash": plan.fingerprint,
        "recipe_seed": plan.recipe.seed,
        "crispedit_version": __version__,
        "tiny": plan.tiny,
        "models": {s.name: s.model_ids() for s in stages if s.model_ids()},
    }
    execution = plan.recipe.execution
    return BuildMeta(
        columns, provenance, ["source", *(s.name for s in stages)],
        Breaker(execution.breaker_min_failures, execution.breaker_fraction),
        os.getcwd(),
    )


def store_for(plan: BuildPlan, meta: BuildMeta | None = None) -> ShardStore:
    meta = meta or build_meta(plan)
    output = plan.recipe.output
    return ShardStore(
        plan.output_dir, meta.score_columns, output.image_format, output.quality, output.png_compression,
        meta.provenance, reject_images=output.reject_images,
    )


def segments(plan: BuildPlan) -> list[list[Step]]:
    """Group the steps into Ray steps: model stages alone, everything between them fused."""
    return [steps for steps, _ in ray_steps(plan)]


def ray_steps(plan: BuildPlan) -> list[tuple[list[Step], bool]]:
    """The Ray steps with, for each, whether it is an actor pool. A CPU stage alone between two
    model stages is a one-stage group too: only its class, not the group's shape, makes a pool."""
    context = context_for(plan)
    groups: list[tuple[list[Step], bool]] = [([SOURCE], False)]
    for index, entry in enumerate(plan.stages):
        if make_stage(entry, context).in_actor_pool:
            groups += [([index], True), ([], False)]
        else:
            groups[-1][0].append(index)
    groups[-1][0].append(WRITE)
    return [g for g in groups if g[0]]


def step_names(plan: BuildPlan, steps: list[Step]) -> tuple[str, ...]:
    return tuple(SOURCE if s == SOURCE else WRITE if s == WRITE else plan.stages[s].name for s in steps)


def declared_steps(plan: BuildPlan, gpus_here: float) -> list[StepReservation]:
    """Every Ray step with what its stages declare (the recipe's overrides applied), before fitting."""
    out = []
    for steps, pool in ray_steps(plan):
        fused = [placement(plan, plan.stages[s]) for s in steps if isinstance(s, int)]
        names = step_names(plan, steps)
        if pool:
            where = fused[0]
            gpus = where.num_gpus if gpus_here > 0 else 0.0
            out.append(StepReservation(
                names, True, where.num_cpus, gpus, where.memory_gb, where.actors, where.num_cpus,
                gpu_memory_gb=where.gpu_memory_gb if gpus else None, seconds_per_item=where.seconds_per_item, auto=not where.sized,
            ))
        else:
            cpus = max([p.num_cpus for p in fused] or [1.0])
            gpus = max([p.num_gpus for p in fused] or [0.0]) if gpus_here > 0 else 0.0
            out.append(StepReservation(names, False, cpus, gpus, None, (1, 1), cpus))
    return out


def resource_plan(
    plan: BuildPlan, resources: dict[str, float], nodes: list[dict[str, Any]], ratio: float = 0.5,
    gpu_memory_gb: float | None = None,
) -> ResourcePlan:
    """The plan for a cluster with these total ``resources`` (``ray.cluster_resources()``) and ``nodes``.

    ``gpu_memory_gb`` is one GPU's memory (default: ``execution.gpu_memory_gb``, else the driver's
    CUDA device, else unknown and not checked). Raises
    :class:`~crispedit.engine.resources.PlanError` (naming the stage and the missing resource) before any model loads.
    """
    gpus = float(resources.get("GPU", 0.0))
    alive = [n.get("Resources", {}) for n in alive_nodes(nodes)] or [resources]
    return make_plan(
        declared_steps(plan, gpus), float(resources.get("CPU", 0.0)), gpus, float(resources.get("memory", 0.0)) / 2**30,
        node_cpus=max(float(n.get("CPU", 0.0)) for n in alive), node_gpus=max(float(n.get("GPU", 0.0)) for n in alive),
        ratio=ratio, share_gpus=plan.recipe.execution.share_gpus,
        gpu_memory_gb=(gpu_memory_gb or device_memory_gb(plan)) if gpus else None,
    )


def device_memory_gb(plan: BuildPlan) -> float | None:
    """One GPU's memory in GiB: the recipe's ``execution.gpu_memory_gb``, else the smallest CUDA device here.

    torch is imported only when a stage declares GPU memory (there is nothing to check otherwise);
    on a driver without CUDA (a CPU head node, fake GPUs) the size is unknown and the check is skipped.
    """
    if plan.recipe.execution.gpu_memory_gb:
        return plan.recipe.execution.gpu_memory_gb
    if not any(placement(plan, e).gpu_memory_gb for e in plan.stages):
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())) / 2**30


def gpu_warnings(plan: BuildPlan, gpus_here: float, where: str) -> list[str]:
    """A stage that declares GPUs on a machine without them runs on the CPU: say so, loudly."""
    out = []
    for entry in plan.stages:
        wanted = placement(plan, entry).num_gpus
        if wanted and gpus_here <= 0:
            out.append(f"stage {entry.name!r} declares {wanted:g} GPU(s) but {where} has none: it runs on the CPU")
    for text in out:
        log.warning(text)
    return out


def with_shard_size(plan: BuildPlan, items: int) -> BuildPlan:
    """The plan with ``items`` source items a shard: with ``max_shards=1``, a build of that many items
    (``crispedit plan --sample K``; the tests' small builds of every recipe)."""
    output = plan.recipe.output.model_copy(update={"shard_size": items})
    return plan.model_copy(update={"recipe": plan.recipe.model_copy(update={"output": output})})
