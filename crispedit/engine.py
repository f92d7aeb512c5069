"""The engine: turns a BuildPlan into committed shards, on Ray or in-process.

The unit of commit is a shard (a fixed range of source items); the unit of transport is
a source item with its children (a "family"). On Ray, consecutive steps without models
(source, CPU stages, writer) are fused into one task; each model stage is its own
``map_batches`` step in an actor pool and receives batches of its own batch size, which
may span shards. Between steps each Ray row is one family, so blocks stay small. The
writing step commits a shard directly when the whole shard passed through one task;
otherwise workers write parts of shards and the driver commits a shard (in a small Ray
task) once every item of its range has arrived. The in-process runner calls the same
segment code shard by shard, and rows are sorted by (item, child position) before
writing, which is why both runners give byte-identical shards.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from crispedit import __version__
from crispedit.build_output import OutputInUse, claim_output, finish, manifest_of, write_manifest
from crispedit.cluster import UnreachableOutputError, check_output_reachable
from crispedit.recipe import BuildPlan, Entry, freeze_plan, thaw_plan
from crispedit.redact import install_log_scrubber, scrub_text
from crispedit.sample import Sample
from crispedit.shards import (
    PlanTooLarge,
    ShardRange,
    ShardStore,
    plan_shards,
    summarize,
)
from crispedit.stages import SOURCES, STAGES, BuildContext, Source, Stage
from crispedit.stages.base import (
    Breaker,
    StageBroken,
    StageStats,
    TransientError,
    apply_stage,
    describe_error,
    stage_stats,
)
from crispedit.stages.source import SourceError
from crispedit.storage import Output

log = logging.getLogger("crispedit")


class BuildError(RuntimeError):
    """A build that must not start, e.g. an output directory that holds a different build."""


@dataclass
class BuildResult:
    out_dir: str
    shards_total: int
    shards_built: int
    shards_skipped: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    #: Shards left uncommitted by transient failures, with the reason: a rerun builds them.
    failed: dict[str, str] = field(default_factory=dict)


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
    return Placement(
        batch_size=(r.batch_size if r and r.batch_size else cls.default_batch_size),
        num_cpus=(r.num_cpus if r and r.num_cpus is not None else declared.num_cpus),
        num_gpus=(r.num_gpus if r and r.num_gpus is not None else declared.num_gpus),
        memory_gb=(r.memory_gb if r and r.memory_gb is not None else declared.memory_gb),
        actors=actors,
    )


@dataclass(frozen=True)
class BuildMeta:
    """What every worker needs to know about the build, computed once on the driver."""

    score_columns: list[str]
    provenance: dict[str, Any]
    stage_order: list[str]
    breaker: Breaker


def build_meta(plan: BuildPlan) -> BuildMeta:
    context = context_for(plan)
    stages = [make_stage(e, context) for e in plan.stages]  # constructed, never set up: metadata only
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
    )


def store_for(plan: BuildPlan, meta: BuildMeta | None = None) -> ShardStore:
    meta = meta or build_meta(plan)
    output = plan.recipe.output
    return ShardStore(
        plan.output_dir, meta.score_columns, output.image_format, output.quality, output.png_compression,
        meta.provenance, reject_images=output.reject_images,
    )


# --- the work on samples, shared by both runners --------------------------------------


def load_shard(source: Source, start: int, end: int) -> list[Sample]:
    """Samples for items [start, end), each charged its share of the load time as the source step."""
    began = time.perf_counter()
    samples = source.load(start, end)
    share = (time.perf_counter() - began) / max(1, len(samples))
    for sample in samples:
        sample.trace.append((source.name, share, True))
    return samples


def ordered_stats(samples: list[Sample], order: list[str]) -> dict[str, StageStats]:
    stats = stage_stats(samples)
    return {name: stats[name] for name in order if name in stats}


SOURCE, WRITE = "source", "write"
Step = str | int
#: Items a source step loads and hands on at a time when a shard is split over steps.
TRANSPORT_ITEMS = 16

_ROW = pa.schema([
    ("start", pa.int64()), ("end", pa.int64()), ("kind", pa.string()),
    ("payload", pa.large_binary()), ("info", pa.string()),
])


def _row(shard: ShardRange, kind: str, payload: bytes | None = None, info: Any = None) -> dict[str, Any]:
    return {"start": shard.start, "end": shard.end, "kind": kind, "payload": payload,
            "info": None if info is None else json.dumps(info)}


class Segment:
    """Some consecutive steps run by one worker (a Ray task or actor, or the local runner).

    Rows in: shard ranges (when the segment starts with the source) or families. Rows out:
    families for the next step, parts or commit markers from the writer, and ``transient``
    and ``broken`` rows that carry a failure to the driver untouched by later steps.
    """

    def __init__(self, plan_json: str, steps: list[Step], meta: BuildMeta) -> None:
        install_log_scrubber()  # a Ray worker's logs carry no credential either
        self.plan = thaw_plan(plan_json)
        self.steps, self.meta = steps, meta
        context = context_for(self.plan)
        self.source = make_source(self.plan, context) if SOURCE in steps else None
        self.stages = [(make_stage(self.plan.stages[i], context), placement(self.plan, self.plan.stages[i]).batch_size)
                       for i in steps if isinstance(i, int)]
        self.store = store_for(self.plan, meta) if WRITE in steps else None
        for stage, _ in self.stages:
            stage.setup()

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        rows = batch.to_pylist()
        passing = [r for r in rows if r["kind"] in ("transient", "broken")]
        if passing:
            yield pa.Table.from_pylist(passing, schema=_ROW)
        if self.source is not None:
            for r in rows:
                if r["kind"] == "range":
                    yield from self._from_source(ShardRange(r["start"], r["end"]))
        else:
            samples: list[Sample] = []
            for r in rows:
                if r["kind"] == "item":
                    samples += pickle.loads(r["payload"])  # written by the previous step of this build
            if samples:
                yield from self._emit(samples)

    def _from_source(self, shard: ShardRange) -> Iterator[pa.Table]:
        assert self.source is not None
        if self.store is not None:  # the whole shard in this one call: commit it here
            yield self._emit_direct(shard)
            return
        for lo in range(shard.start, shard.end, TRANSPORT_ITEMS):
            yield from self._emit(load_shard(self.source, lo, min(lo + TRANSPORT_ITEMS, shard.end)), shard)

    def _run_stages(self, samples: list[Sample]) -> list[Sample]:
        for stage, batch_size in self.stages:
            samples = apply_stage(stage, stage.name, samples, batch_size, self.meta.breaker)
        return samples

    def _emit_direct(self, shard: ShardRange) -> pa.Table:
        assert self.source is not None and self.store is not None
        try:
            samples = self._run_stages(load_shard(self.source, shard.start, shard.end))
        except TransientError as error:
            return pa.Table.from_pylist([_row(shard, "transient", info=describe_error(error))], schema=_ROW)
        except StageBroken as error:
            return pa.Table.from_pylist([_row(shard, "broken", info=_broken_info(error))], schema=_ROW)
        marker = self.store.write(shard, samples, ordered_stats(samples, self.meta.stage_order))
        return pa.Table.from_pylist([_row(shard, "marker", info=marker)], schema=_ROW)

    def _emit(self, samples: list[Sample], shard: ShardRange | None = None) -> Iterator[pa.Table]:
        shards = {s.index: shard or _shard_of(s) for s in samples}
        try:
            samples = self._run_stages(samples)
        except TransientError as error:
            reason = describe_error(error)
            yield pa.Table.from_pylist([_row(s, "transient", info=reason) for s in set(shards.values())], schema=_ROW)
            return
        except StageBroken as error:
            some = next(iter(shards.values()))
            yield pa.Table.from_pylist([_row(some, "broken", info=_broken_info(error))], schema=_ROW)
            return
        families: dict[int, list[Sample]] = defaultdict(list)
        for sample in samples:
            families[sample.index].append(sample)
        if self.store is None:
            out = []
            for index, family in families.items():
                for member in family:
                    member.meta["_shard"] = (shards[index].start, shards[index].end)
                out.append(_row(shards[index], "item", pickle.dumps(family, protocol=5)))
            yield pa.Table.from_pylist(out, schema=_ROW)
            return
        by_shard: dict[ShardRange, list[Sample]] = defaultdict(list)
        for index, family in families.items():
            by_shard[shards[index]] += family
        out = []
        for part_shard, members in by_shard.items():
            path = self.store.write_part(part_shard, members)
            stats = {name: s.to_dict() for name, s in ordered_stats(members, self.meta.stage_order).items()}
            out.append(_row(part_shard, "part", info={"path": path, "items": len({m.index for m in members}), "stages": stats}))
        yield pa.Table.from_pylist(out, schema=_ROW)


def _shard_of(sample: Sample) -> ShardRange:
    start, end = sample.meta.pop("_shard")
    return ShardRange(start, end)


def _broken_info(error: StageBroken) -> dict[str, str]:
    return {"stage": error.stage, "message": str(error), "trace": error.trace}


#: Segments already built in this worker process, so a task step thaws the plan and builds its
#: stages once per worker rather than once per call (Ray reuses task worker processes).
_SEGMENTS: dict[tuple[str, str], Segment] = {}


class _TaskSegment:
    """Task flavour of :class:`Segment` (CPU stages only): built on first use in each worker process."""

    def __init__(self, plan_json: str, steps: list[Step], meta: BuildMeta) -> None:
        self.args = (plan_json, steps, meta)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        key = (self.args[0], repr(self.args[1:]))
        if key not in _SEGMENTS:
            _SEGMENTS.clear()  # one build at a time per worker; never grow without bound
            _SEGMENTS[key] = Segment(*self.args)
        yield from _SEGMENTS[key](batch)


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
    """Run a plan to completion, skipping committed shards. Safe to kill and rerun at any moment.

    Raises :class:`StageBroken` (after saving its traceback under OUT/logs/) when the breaker trips.
    """
    started = time.perf_counter()
    meta = build_meta(plan)
    source = make_source(plan, context_for(plan))
    where = f"{plan.source.origin}:{plan.source.line}" if plan.source.line else plan.source.origin
    try:
        count = source.count()
        shards = plan_shards(count, plan.recipe.output.shard_size)
    except (SourceError, PlanTooLarge) as error:
        raise BuildError(f"{where}: source: {error}") from None
    except (OSError, ValueError) as error:  # a missing file, a column the files lack: the recipe's data, not a bug
        raise BuildError(f"{where}: source ({plan.source.kind}): {error}") from None
    manifest = manifest_of(plan, count, meta.score_columns)
    try:
        plan, replaces = claim_output(plan, manifest, overwrite, source.locations())
    except OutputInUse as error:
        raise BuildError(str(error)) from None
    store = store_for(plan, meta)
    write_manifest(plan, store.output, manifest)
    store.remove_temporaries()
    todo = [s for s in shards if not store.is_committed(s)]
    skipped = len(shards) - len(todo)
    if max_shards is not None:
        todo = todo[:max_shards]
    chosen = runner or plan.recipe.execution.runner
    log.info("%s: %d items in %d shards; %d committed, %d to build (%s runner)", plan.recipe.name, count, len(shards), skipped, len(todo), chosen)
    failed: dict[str, str] = {}
    warnings: list[str] = []
    if todo:
        run = _run_local if chosen == "local" else _run_ray
        with _Progress(progress, len(todo), plan.recipe.name) as advance:
            try:
                failed = run(plan, meta, todo, advance, warnings, address=address, num_cpus=num_cpus)
            except StageBroken as error:
                _save_broken(store.output, error)
                raise
    for name, reason in failed.items():
        log.warning("shard %s not committed: %s", name, reason)
    summary = summarize(store.markers())
    _add_resources(plan, summary)
    summary.update(
        recipe=plan.recipe.name,
        fingerprint=plan.fingerprint,
        shards_total=len(shards),
        complete=summary["shards"] == len(shards),
        last_run={"runner": chosen, "shards_built": len(todo) - len(failed), "shards_failed": failed,
                  "seconds": round(time.perf_counter() - started, 3)},
    )
    if warnings:
        summary["warnings"] = warnings
    store.output.write_text("summary.json", scrub_text(json.dumps(summary, indent=1)))
    if store.output.is_local and summary["shards"] and meta.score_columns:
        from crispedit.filter_report import write_histograms  # matplotlib only when there is something to draw

        write_histograms(store.output.root)
    out_dir = finish(store.output.url, replaces, summary["complete"] and not failed)
    return BuildResult(out_dir, len(shards), len(todo) - len(failed), skipped, time.perf_counter() - started, summary, failed)


def _add_resources(plan: BuildPlan, summary: dict[str, Any]) -> None:
    """GPU-seconds per stage (seconds times GPUs held) and GPU-hours for the build."""
    gpus = {e.name: placement(plan, e).num_gpus for e in plan.stages}
    total = 0.0
    for name, stats in summary["stages"].items():
        if gpus.get(name):
            stats["gpu_seconds"] = round(stats["seconds"] * gpus[name], 3)
            total += stats["gpu_seconds"]
    summary["gpu_hours"] = round(total / 3600.0, 6)


def _save_broken(output: Output, error: StageBroken) -> None:
    key = output.join("logs", f"broken-{error.stage}.txt")
    output.write_text(key, scrub_text(f"{error}\n\n{error.trace}"))
    log.error("%s\n%s\n(traceback saved in %s)", error, error.trace, output.url_of(key))


class _Progress:
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


def _gpu_warnings(plan: BuildPlan, gpus_here: float, where: str) -> list[str]:
    """A stage that declares GPUs on a machine without them runs on the CPU: say so, loudly."""
    out = []
    for entry in plan.stages:
        wanted = placement(plan, entry).num_gpus
        if wanted and gpus_here <= 0:
            out.append(f"stage {entry.name!r} declares {wanted:g} GPU(s) but {where} has none: it runs on the CPU")
    for text in out:
        log.warning(text)
    return out


# --- in-process runner ----------------------------------------------------------------


def _run_local(
    plan: BuildPlan, meta: BuildMeta, todo: list[ShardRange], advance: Callable[[dict[str, Any]], None],
    warnings: list[str], **_: Any,
) -> dict[str, str]:
    """Every step fused into one segment, called shard by shard: the Ray code path, minus Ray."""
    warnings += _gpu_warnings(plan, _local_gpus(plan), "this machine")
    segment = Segment(freeze_plan(plan), [SOURCE, *range(len(plan.stages)), WRITE], meta)
    failed: dict[str, str] = {}
    for shard in todo:
        request = pa.Table.from_pylist([_row(shard, "range")], schema=_ROW)
        for table in segment(request):
            for row in table.to_pylist():
                info = json.loads(row["info"])
                if row["kind"] == "marker":
                    advance(info)
                elif row["kind"] == "transient":
                    failed[shard.name] = info
                elif row["kind"] == "broken":
                    raise StageBroken(info["stage"], info["message"], info["trace"])
    return failed


def _local_gpus(plan: BuildPlan) -> float:
    """GPUs torch sees; asked only when a stage declares one (a CPU-only recipe never imports torch)."""
    if not any(placement(plan, e).num_gpus for e in plan.stages):
        return 0.0
    try:
        import torch
    except ImportError:
        return 0.0
    return float(torch.cuda.device_count())


# --- Ray runner -----------------------------------------------------------------------


def segments(plan: BuildPlan) -> list[list[Step]]:
    """Group the steps into Ray steps: model stages alone, everything between them fused."""
    context = context_for(plan)
    groups: list[list[Step]] = [[SOURCE]]
    for index, entry in enumerate(plan.stages):
        if make_stage(entry, context).in_actor_pool:
            groups += [[index], []]
        else:
            groups[-1].append(index)
    groups[-1].append(WRITE)
    return [g for g in groups if g]


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


def _run_ray(
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
        if not log.isEnabledFor(logging.INFO):
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        shared = [plan.output_dir] if plan.recipe.output.shared else []
        try:
            check_output_reachable(plan.output_dir, ray.nodes(), shared)
        except UnreachableOutputError as error:
            raise BuildError(str(error)) from None
        gpus_here = float(ray.cluster_resources().get("GPU", 0.0))
        warnings += _gpu_warnings(plan, gpus_here, "the Ray cluster")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        plan_json = freeze_plan(plan)
        ds = ray.data.from_arrow([pa.Table.from_pylist([_row(s, "range")], schema=_ROW) for s in todo])
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
                    _TaskSegment(plan_json, steps, meta), batch_size=batch_size, batch_format="pyarrow",
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
