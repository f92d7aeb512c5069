"""The Ray runner: one ``map_batches`` step per model stage (an actor pool), the rest fused into tasks.

Shards split over steps are written as parts by the workers and committed by the driver
(in a small Ray task) once every item of the shard has arrived.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from crispedit.core.failures import StageBroken
from crispedit.core.library_logs import route_from_environment
from crispedit.core.shards import ShardRange
from crispedit.core.stats import StageStats
from crispedit.engine.cluster import UnreachableOutputError, check_output_reachable
from crispedit.engine.plan import (
    SOURCE,
    WRITE,
    BuildError,
    BuildMeta,
    context_for,
    gpu_warnings,
    make_stage,
    placement,
    segments,
    store_for,
)
from crispedit.engine.segment import ROW_SCHEMA, Segment, TaskSegment, transport_row
from crispedit.recipe import BuildPlan, freeze_plan, thaw_plan

log = logging.getLogger("crispedit")


class _Commits:
    """Driver-side bookkeeping of shards whose items were written as parts by several workers."""

    def __init__(self, plan_json: str, meta: BuildMeta, advance: Callable[[dict[str, Any]], None]) -> None:
        import ray

        self.args = (plan_json, meta)
        self.advance = advance
        self.parts: dict[ShardRange, list[str]] = defaultdict(list)
        self.items: dict[ShardRange, int] = defaultdict(int)
        self.stats: dict[ShardRange, dict[str, StageStats]] = defaultdict(dict)
        self.failed: dict[str, str] = {}
        self.pending: list[Any] = []
        self.commit_task = ray.remote(num_cpus=0.25)(_commit_parts)

    def part(self, shard: ShardRange, info: dict[str, Any]) -> None:
        self.parts[shard].append(info["path"])
        self.items[shard] += info["items"]
        for name, data in info["stages"].items():
            self.stats[shard].setdefault(name, StageStats()).add(StageStats.from_dict(data))
        if self.items[shard] == shard.end - shard.start and shard.name not in self.failed:
            stats = {n: self.stats[shard][n] for n in self.args[1].stage_order if n in self.stats[shard]}
            self.pending.append(self.commit_task.remote(*self.args, shard, self.parts.pop(shard), stats))
        self.collect(block=False)

    def collect(self, block: bool) -> None:
        import ray

        while self.pending:
            ready, self.pending = ray.wait(self.pending, num_returns=len(self.pending) if block else 1, timeout=None if block else 0)
            if not ready:
                return
            for marker in ray.get(ready):
                self.advance(marker)

    def finish(self, todo: list[ShardRange]) -> dict[str, str]:
        self.collect(block=True)
        for shard, arrived in self.items.items():
            if shard in self.parts and shard.name not in self.failed:
                self.failed[shard.name] = f"incomplete: {arrived} of {shard.end - shard.start} items arrived"
        return self.failed


def _commit_parts(plan_json: str, meta: BuildMeta, shard: ShardRange, paths: list[str], stats: dict[str, StageStats]) -> dict[str, Any]:
    return store_for(thaw_plan(plan_json), meta).commit_parts(shard, paths, stats)


def run_ray(
    plan: BuildPlan,
    meta: BuildMeta,
    todo: list[ShardRange],
    advance: Callable[[dict[str, Any]], None],
    warnings: list[str],
    *,
    address: str | None = None,
    num_cpus: int | None = None,
) -> dict[str, str]:
    import ray
    import ray.data

    execution = plan.recipe.execution
    started_here = False
    if not ray.is_initialized():
        quiet = logging.INFO if log.isEnabledFor(logging.INFO) else logging.ERROR
        init: dict[str, Any] = {"address": address or execution.address, "include_dashboard": False, "logging_level": quiet}
        if not init["address"]:
            init["num_cpus"] = num_cpus or execution.num_cpus
            if execution.num_gpus is not None:
                init["num_gpus"] = execution.num_gpus
        ray.init(**{k: v for k, v in init.items() if v is not None})
        started_here = True
    try:
        route_from_environment()  # ray.init put Ray's console handler back
        if not log.isEnabledFor(logging.INFO):
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        shared = [plan.output_dir] if plan.recipe.output.shared else []
        try:
            check_output_reachable(plan.output_dir, ray.nodes(), shared)
        except UnreachableOutputError as error:
            raise BuildError(str(error)) from None
        gpus_here = float(ray.cluster_resources().get("GPU", 0.0))
        warnings += gpu_warnings(plan, gpus_here, "the Ray cluster")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        plan_json = freeze_plan(plan)
        ds = ray.data.from_arrow([pa.Table.from_pylist([transport_row(s, "range")], schema=ROW_SCHEMA) for s in todo])
        for steps in segments(plan):
            names = [SOURCE if s == SOURCE else WRITE if s == WRITE else plan.stages[s].name for s in steps]
            batch_size = 1 if SOURCE in steps else None
            if len(steps) == 1 and isinstance(steps[0], int):
                where = placement(plan, plan.stages[steps[0]])
                ds = ds.map_batches(
                    Segment, fn_constructor_args=(plan_json, steps, meta),
                    compute=ray.data.ActorPoolStrategy(min_size=where.actors[0], max_size=where.actors[1]),
                    batch_size=where.batch_size, batch_format="pyarrow",
                    num_cpus=min(where.num_cpus, _actor_cpus(plan)),
                    num_gpus=(where.num_gpus if gpus_here > 0 else 0) or None,
                    memory=int(where.memory_gb * 2**30) if where.memory_gb else None,
                )
            else:
                fused = [placement(plan, plan.stages[s]) for s in steps if isinstance(s, int)]
                ds = ds.map_batches(
                    TaskSegment(plan_json, steps, meta), batch_size=batch_size, batch_format="pyarrow",
                    num_cpus=max([p.num_cpus for p in fused] or [1.0]),
                    num_gpus=(max([p.num_gpus for p in fused] or [0.0]) if gpus_here > 0 else 0) or None,
                )
            log.debug("ray step %s", names)
        commits = _Commits(plan_json, meta, advance)
        for row in ds.iter_rows():
            shard = ShardRange(row["start"], row["end"])
            info = json.loads(row["info"]) if row["info"] else None
            if row["kind"] == "marker":
                advance(info)
            elif row["kind"] == "part":
                commits.part(shard, info)
            elif row["kind"] == "transient":
                commits.failed.setdefault(shard.name, info)
            elif row["kind"] == "broken":
                raise StageBroken(info["stage"], info["message"], info["trace"])
        return commits.finish(todo)
    finally:
        if started_here:
            ray.shutdown()


def _actor_cpus(plan: BuildPlan) -> float:
    """CPUs reserved per model actor. Actors hold their CPUs for the whole build, so on a small
    machine they must leave room for the task steps or the pipeline would stall."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    context = context_for(plan)
    actors = sum(placement(plan, e).actors[1] for e in plan.stages if make_stage(e, context).in_actor_pool)
    return min(1.0, total / (2.0 * max(actors, 1)))
