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

from crispedit.core.failures import StageBroken
from crispedit.core.library_logs import route_from_environment
from crispedit.core.shards import ShardRange
from crispedit.core.stats import StageStats
from crispedit.engine.cluster import UnreachableOutputError, check_output_reachable
from crispedit.engine.plan import (
    SOURCE,
    BuildError,
    BuildMeta,
    gpu_warnings,
    placement,
    ray_steps,
    resource_plan,
    store_for,
)
from crispedit.engine.resources import PlanError
from crispedit.engine.segment import Segment, TaskSegment, transport_row
from crispedit.engine.stall import BuildStalled, StallWatch
from crispedit.recipe import BuildPlan, freeze_plan, thaw_plan

log = logging.getLogger("crispedit")


class _Commits:
    """Driver-side bookkeeping of shards whose items were written as parts by several workers."""

    def __init__(
        self, plan_json: str, meta: BuildMeta, advance: Callable[[dict[str, Any]], None], cpus: float, watch: StallWatch,
    ) -> None:
        import ray

        self.args = (plan_json, meta)
        self.watch = watch
        self.advance = advance
        self.parts: dict[ShardRange, list[str]] = defaultdict(list)
        self.items: dict[ShardRange, int] = defaultdict(int)
        self.stats: dict[ShardRange, dict[str, StageStats]] = defaultdict(dict)
        self.failed: dict[str, str] = {}
        self.pending: list[Any] = []
        self.commit_task = ray.remote(num_cpus=cpus)(_commit_parts)

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
            ready, self.pending = ray.wait(self.pending, num_returns=1, timeout=self.watch.poll_s if block else 0)
            if not ready:
                if not block:
                    return
                self.watch.check(f"{len(self.pending)} commit task(s)")
                continue
            for marker in ray.get(ready):
                self.watch.progress()
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
    from ray.data.exceptions import ExecutionTimeoutError

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
        resources = ray.cluster_resources()
        gpus_here = float(resources.get("GPU", 0.0))
        warnings += gpu_warnings(plan, gpus_here, "the Ray cluster")
        context = ray.data.DataContext.get_current()
        try:
            fitted = resource_plan(plan, resources, ray.nodes(), context.op_resource_reservation_ratio)
        except PlanError as error:
            raise BuildError(str(error)) from None
        for line in fitted.lines():
            log.info("%s", line)
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        # The commit tasks run beside Ray Data, so its budget must leave their CPUs free.
        context.execution_options.resource_limits = ray.data.ExecutionResources(cpu=fitted.cpus - fitted.commit_cpus)
        stall_s = execution.stall_timeout_s
        context.execution_no_progress_timeout_s = stall_s if stall_s else -1
        plan_json = freeze_plan(plan)
        # from_items puts the blocks from the driver; from_arrow would first run one 1-CPU metadata task per
        # shard, outside Ray Data's executor and its no-progress guard, on a cluster that may have no CPU free.
        ds = ray.data.from_items([transport_row(s, "range") for s in todo], override_num_blocks=len(todo))
        for (steps, pool), where in zip(ray_steps(plan), fitted.steps, strict=True):
            batch_size = 1 if SOURCE in steps else None
            common: dict[str, Any] = dict(
                batch_format="pyarrow", num_cpus=where.num_cpus, num_gpus=where.num_gpus or None,
                memory=int(where.memory_gb * 2**30) if where.memory_gb else None,
            )
            if pool:
                ds = ds.map_batches(
                    Segment, fn_constructor_args=(plan_json, steps, meta),
                    compute=ray.data.ActorPoolStrategy(min_size=where.actors[0], max_size=where.actors[1]),
                    batch_size=placement(plan, plan.stages[steps[0]]).batch_size, **common,
                )
            else:
                # max_calls=0 is Ray's own default for CPU tasks, written out: remote args that differ from
                # the next pool's keep Ray Data from fusing this task step into it (it fuses when they are
                # equal, as the plan's scaled requests may be), which would run these CPU stages inside the
                # model actor's one process.
                ds = ds.map_batches(TaskSegment(plan_json, steps, meta), batch_size=batch_size, max_calls=0, **common)
            log.debug("ray step %s", where.label)
        watch = StallWatch(stall_s, fitted, log)
        commits = _Commits(plan_json, meta, advance, fitted.commit_cpus, watch)
        try:
            for row in ds.iter_rows():
                watch.progress()
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
        except ExecutionTimeoutError as error:  # Ray Data's own guard: nothing moved for stall_timeout_s
            raise BuildStalled(watch.diagnose(str(error))) from None
        return commits.finish(todo)
    finally:
        if started_here:
            ray.shutdown()

