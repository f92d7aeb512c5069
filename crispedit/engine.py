"""The engine: turns a BuildPlan into committed shards, on Ray or in-process.

The unit of work is a shard (a fixed range of source items). On Ray every stage is one
streaming ``map_batches`` over shards: model stages in actor pools (``setup()`` once per
actor), the others as tasks, and the last step writes and commits the shard on the
worker. The in-process runner calls the very same functions in a loop, which is why the
two give byte-identical shards.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from crispedit import __version__
from crispedit.recipe import BuildPlan, Entry
from crispedit.sample import Sample
from crispedit.shards import (
    ShardRange,
    ShardStore,
    atomic_write_text,
    plan_shards,
    summarize,
)
from crispedit.stages import SOURCES, STAGES, BuildContext, Source, Stage
from crispedit.stages.base import StageStats, apply_stage

log = logging.getLogger("crispedit")


class BuildError(RuntimeError):
    """A build that must not start, e.g. an output directory that holds a different build."""


@dataclass
class BuildResult:
    out_dir: Path
    shards_total: int
    shards_built: int
    shards_skipped: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def context_for(plan: BuildPlan) -> BuildContext:
    return BuildContext(
        recipe_name=plan.recipe.name,
        fingerprint=plan.fingerprint,
        seed=plan.recipe.seed,
        tiny=plan.tiny,
        recipe_dir=plan.recipe_dir,
        cache_dir=plan.output_dir / ".cache",
    )


def make_source(plan: BuildPlan, context: BuildContext) -> Source:
    return SOURCES[plan.source.kind](plan.source.params, context)


def make_stage(entry: Entry, context: BuildContext) -> Stage:
    return STAGES[entry.kind](entry.params, context, name=entry.name)


def batch_size_for(plan: BuildPlan, entry: Entry) -> int:
    resources = plan.recipe.execution.stages.get(entry.name)
    if resources is not None and resources.batch_size:
        return resources.batch_size
    return STAGES[entry.kind].default_batch_size


def store_for(plan: BuildPlan) -> ShardStore:
    context = context_for(plan)
    stages = [make_stage(e, context) for e in plan.stages]
    columns: list[str] = []
    for stage in stages:
        columns += [c for c in stage.score_columns() if c not in columns]
    output = plan.recipe.output
    provenance = {
        "recipe": plan.recipe.name,
        "recipe_hash": plan.fingerprint,
        "recipe_seed": plan.recipe.seed,
        "crispedit_version": __version__,
        "tiny": plan.tiny,
        "models": {s.name: s.model_ids() for s in stages if s.model_ids()},
    }
    return ShardStore(plan.output_dir, columns, output.image_format, output.quality, output.png_compression, provenance)


# --- the work on one shard, shared by both runners ------------------------------------


def load_shard(source: Source, shard: ShardRange) -> tuple[list[Sample], dict[str, StageStats]]:
    start = time.perf_counter()
    samples = source.load(shard.start, shard.end)
    stats = StageStats(seen=len(samples), passed=sum(s.alive for s in samples), seconds=time.perf_counter() - start)
    for s in samples:
        if s.reject is not None:
            stats.rejected[s.reject.category] += 1
    return samples, {source.name: stats}


def run_stage(stage: Stage, batch_size: int, samples: list[Sample], stats: dict[str, StageStats]) -> None:
    stats[stage.name] = apply_stage(stage, stage.name, samples, batch_size)


# --- entry point ----------------------------------------------------------------------


def build(
    plan: BuildPlan,
    *,
    runner: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    max_shards: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Run a plan to completion, skipping committed shards. Safe to kill and rerun at any moment."""
    started = time.perf_counter()
    context = context_for(plan)
    source = make_source(plan, context)
    count = source.count()
    shards = plan_shards(count, plan.recipe.output.shard_size)
    store = store_for(plan)
    out_dir = plan.output_dir
    _check_manifest(plan, out_dir, count, store.score_columns, overwrite)
    store.remove_temporaries()
    todo = [s for s in shards if not store.is_committed(s)]
    skipped = len(shards) - len(todo)
    if max_shards is not None:
        todo = todo[:max_shards]
    chosen = runner or plan.recipe.execution.runner
    log.info("%s: %d items in %d shards; %d committed, %d to build (%s runner)", plan.recipe.name, count, len(shards), skipped, len(todo), chosen)
    if todo:
        run = _run_local if chosen == "local" else _run_ray
        with _progress(progress, len(todo), plan.recipe.name) as advance:
            run(plan, todo, advance, address=address, num_cpus=num_cpus)
    summary = summarize(store.markers())
    summary.update(
        recipe=plan.recipe.name,
        fingerprint=plan.fingerprint,
        shards_total=len(shards),
        complete=summary["shards"] == len(shards),
        last_run={"runner": chosen, "shards_built": len(todo), "seconds": round(time.perf_counter() - started, 3)},
    )
    atomic_write_text(json.dumps(summary, indent=1), out_dir / "summary.json")
    return BuildResult(out_dir, len(shards), len(todo), skipped, time.perf_counter() - started, summary)


def _check_manifest(plan: BuildPlan, out_dir: Path, count: int, columns: list[str], overwrite: bool) -> None:
    """Refuse to mix two different builds in one directory; that would corrupt both."""
    output = plan.recipe.output
    manifest = {
        "recipe": plan.recipe.name,
        "fingerprint": plan.fingerprint,
        "items": count,
        "shard_size": output.shard_size,
        "image_format": output.image_format,
        "quality": output.quality,
        "png_compression": output.png_compression,
        "score_columns": columns,
        "tiny": plan.tiny,
    }
    path = out_dir / "manifest.json"
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in manifest if old.get(k) != manifest[k]]
        if changed:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {manifest[k]!r}" for k in changed)
            raise BuildError(
                f"{out_dir} holds a different build ({detail}); choose another --out, or pass --overwrite to rebuild it"
            )
    if overwrite and path.is_file():
        import shutil

        for folder in ("data", "rejects", "_commits"):
            shutil.rmtree(out_dir / folder, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({**manifest, "crispedit_version": __version__}, indent=1), path)
    atomic_write_text(Path(plan.file).read_text(encoding="utf-8"), out_dir / "recipe.yaml")


class _progress:
    """A rich progress bar over shards, or nothing."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label
        self.bar: Any = None

    def __enter__(self) -> Callable[[dict[str, Any]], None]:
        rows = rejects = 0
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
                TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            )
            self.bar.__enter__()
            task = self.bar.add_task(self.label, total=self.total, counts="")

        def advance(marker: dict[str, Any]) -> None:
            nonlocal rows, rejects
            rows += marker["rows"]
            rejects += marker["rejects"]
            if self.bar is not None:
                self.bar.update(task, advance=1, counts=f"{rows} rows, {rejects} rejects")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


# --- in-process runner ----------------------------------------------------------------


def _run_local(plan: BuildPlan, todo: list[ShardRange], advance: Callable[[dict[str, Any]], None], **_: Any) -> None:
    """Every step fused into one segment, called shard by shard: the Ray code path, minus Ray."""
    segment = _SegmentFn(plan, [SOURCE, *range(len(plan.stages)), WRITE])
    for shard in todo:
        result = segment(pa.Table.from_pylist([{"start": shard.start, "end": shard.end}]))
        advance(json.loads(result.column("marker")[0].as_py()))


# --- Ray runner -----------------------------------------------------------------------
#
# Steps are "source", each stage index, and "write". Consecutive steps without models are
# fused into one Ray task (no serialisation between them); each model stage is its own
# actor-pool step. Between steps a shard travels as one row: its range and its pickled
# samples and stats. The writing step returns only the commit marker.

SOURCE, WRITE = "source", "write"
Step = str | int

_ROW = pa.schema([("start", pa.int64()), ("end", pa.int64()), ("payload", pa.large_binary()), ("marker", pa.string())])


def segments(plan: BuildPlan) -> list[list[Step]]:
    """Group the steps into Ray steps: model stages alone, everything between them fused."""
    groups: list[list[Step]] = [[SOURCE]]
    for index, entry in enumerate(plan.stages):
        if STAGES[entry.kind].uses_models:
            groups += [[index], []]
        else:
            groups[-1].append(index)
    groups[-1].append(WRITE)
    return [g for g in groups if g]


class _SegmentFn:
    """A Ray task or actor body running some consecutive steps over whole shards."""

    def __init__(self, plan: BuildPlan, steps: list[Step]) -> None:
        self.plan, self.steps = plan, steps
        context = context_for(plan)
        self.source = make_source(plan, context) if SOURCE in steps else None
        self.stages = {i: make_stage(plan.stages[i], context) for i in steps if isinstance(i, int)}
        self.sizes = {i: batch_size_for(plan, plan.stages[i]) for i in self.stages}
        self.store = store_for(plan) if WRITE in steps else None
        for stage in self.stages.values():
            stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            shard = ShardRange(row["start"], row["end"])
            if self.source is not None:
                samples, stats = load_shard(self.source, shard)
            else:
                samples, stats = pickle.loads(row["payload"])  # produced by the previous step of this build
            for index, stage in self.stages.items():
                run_stage(stage, self.sizes[index], samples, stats)
            if self.store is not None:
                marker = self.store.write(shard, samples, stats)
                out.append({"start": shard.start, "end": shard.end, "payload": None, "marker": json.dumps(marker)})
            else:
                payload = pickle.dumps((samples, stats), protocol=5)
                out.append({"start": shard.start, "end": shard.end, "payload": payload, "marker": None})
        return pa.Table.from_pylist(out, schema=_ROW)


class _TaskSegment:
    """Task flavour: built inside each task call, since tasks keep no state between calls."""

    def __init__(self, plan: BuildPlan, steps: list[Step]) -> None:
        self.plan, self.steps = plan, steps

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _SegmentFn(self.plan, self.steps)(batch)


def _run_ray(
    plan: BuildPlan,
    todo: list[ShardRange],
    advance: Callable[[dict[str, Any]], None],
    *,
    address: str | None = None,
    num_cpus: int | None = None,
) -> None:
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
        if not log.isEnabledFor(logging.INFO):
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        ds = ray.data.from_items([{"start": s.start, "end": s.end} for s in todo], override_num_blocks=len(todo))
        for steps in segments(plan):
            names = [SOURCE if s == SOURCE else WRITE if s == WRITE else plan.stages[s].name for s in steps]
            if len(steps) == 1 and isinstance(steps[0], int):
                resources = execution.stages.get(names[0])
                ds = ds.map_batches(
                    _SegmentFn, fn_constructor_args=(plan, steps),
                    compute=ray.data.ActorPoolStrategy(size=resources.concurrency if resources and resources.concurrency else 1),
                    batch_size=1, batch_format="pyarrow",
                    num_cpus=_cpus(plan, names, _actor_cpus(plan)),
                    num_gpus=(resources.num_gpus if resources else 0.0) or None,
                )
            else:
                ds = ds.map_batches(
                    _TaskSegment(plan, steps), batch_size=1, batch_format="pyarrow",
                    num_cpus=_cpus(plan, names, 1.0), num_gpus=_gpus(plan, names) or None,
                )
        for row in ds.iter_rows():
            advance(json.loads(row["marker"]))
    finally:
        if started_here:
            ray.shutdown()


def _cpus(plan: BuildPlan, names: list[str], default: float) -> float:
    """CPUs for a Ray step: the most any of its fused stages asks for, else ``default``."""
    asked = [r.num_cpus for n in names if (r := plan.recipe.execution.stages.get(n)) and r.num_cpus is not None]
    return max(asked) if asked else default


def _gpus(plan: BuildPlan, names: list[str]) -> float:
    return max([r.num_gpus for n in names if (r := plan.recipe.execution.stages.get(n))] or [0.0])


def _actor_cpus(plan: BuildPlan) -> float:
    """CPUs reserved per model actor. Actors hold their CPUs for the whole build, so on a small
    machine they must leave room for the task steps or the pipeline would stall."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    stages = plan.recipe.execution.stages
    actors = sum(
        (stages[e.name].concurrency or 1) if e.name in stages else 1 for e in plan.stages if STAGES[e.kind].uses_models
    )
    return min(1.0, total / (2.0 * max(actors, 1)))
