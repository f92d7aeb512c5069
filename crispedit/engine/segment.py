"""Some consecutive steps run by one worker: the code both runners share.

The in-process runner calls one segment holding every step, shard by shard; the Ray runner
chains segments with ``map_batches`` (model stages alone in actor pools, the rest fused
into tasks). Rows between segments are families pickled into Arrow tables.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from crispedit.core.failures import StageBroken, TransientError, describe_error
from crispedit.core.library_logs import route_from_environment
from crispedit.core.redact import install_log_scrubber
from crispedit.core.sample import Sample
from crispedit.core.shards import ShardRange
from crispedit.core.source import Source
from crispedit.core.stats import StageStats, stage_stats
from crispedit.engine.plan import SOURCE, WRITE, BuildMeta, Step, context_for, make_source, make_stage, placement, store_for
from crispedit.engine.run import apply_stage
from crispedit.recipe import thaw_plan


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


#: Items a source step loads and hands on at a time when a shard is split over steps.
TRANSPORT_ITEMS = 16

ROW_SCHEMA = pa.schema([
    ("start", pa.int64()), ("end", pa.int64()), ("kind", pa.string()),
    ("payload", pa.large_binary()), ("info", pa.string()),
])


def transport_row(shard: ShardRange, kind: str, payload: bytes | None = None, info: Any = None) -> dict[str, Any]:
    return {"start": shard.start, "end": shard.end, "kind": kind, "payload": payload,
            "info": None if info is None else json.dumps(info)}


def enter_workdir(workdir: str) -> None:
    """Work from the driver's directory where this node has it.

    Recipes' relative paths (source files, list files, path cells without ``base``) are
    relative to where ``crispedit`` was run; a Ray worker starts wherever its raylet or an
    earlier job left it. On a node without that directory the worker stays put, and a
    relative path then fails as "no such file", never by reading another folder's file.
    """
    if workdir and os.path.isdir(workdir) and os.getcwd() != workdir:
        os.chdir(workdir)


class Segment:
    """Some consecutive steps run by one worker (a Ray task or actor, or the local runner).

    Rows in: shard ranges (when the segment starts with the source) or families. Rows out:
    families for the next step, parts or commit markers from the writer, and ``transient``
    and ``broken`` rows that carry a failure to the driver untouched by later steps.
    """

    def __init__(self, plan_json: str, steps: list[Step], meta: BuildMeta) -> None:
        install_log_scrubber()  # a Ray worker's logs carry no credential either
        enter_workdir(meta.workdir)
        self.plan = thaw_plan(plan_json)
        self.steps, self.meta = steps, meta
        context = context_for(self.plan)
        self.source = make_source(self.plan, context) if SOURCE in steps else None
        self.stages = [(make_stage(self.plan.stages[i], context), placement(self.plan, self.plan.stages[i]).batch_size)
                       for i in steps if isinstance(i, int)]
        self.store = store_for(self.plan, meta) if WRITE in steps else None
        route_from_environment(configure=any(stage.model_ids() for stage, _ in self.stages))  # library notices: the build's log
        for stage, _ in self.stages:
            stage.setup()

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        enter_workdir(self.meta.workdir)  # a reused worker may have served another build since
        rows = batch.to_pylist()
        passing = [r for r in rows if r["kind"] in ("transient", "broken")]
        if passing:
            yield pa.Table.from_pylist(passing, schema=ROW_SCHEMA)
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
            return pa.Table.from_pylist([transport_row(shard, "transient", info=describe_error(error))], schema=ROW_SCHEMA)
        except StageBroken as error:
            return pa.Table.from_pylist([transport_row(shard, "broken", info=_broken_info(error))], schema=ROW_SCHEMA)
        marker = self.store.write(shard, samples, ordered_stats(samples, self.meta.stage_order))
        return pa.Table.from_pylist([transport_row(shard, "marker", info=marker)], schema=ROW_SCHEMA)

    def _emit(self, samples: list[Sample], shard: ShardRange | None = None) -> Iterator[pa.Table]:
        shards = {s.index: shard or _shard_of(s) for s in samples}
        try:
            samples = self._run_stages(samples)
        except TransientError as error:
            reason = describe_error(error)
            yield pa.Table.from_pylist([transport_row(s, "transient", info=reason) for s in set(shards.values())], schema=ROW_SCHEMA)
            return
        except StageBroken as error:
            some = next(iter(shards.values()))
            yield pa.Table.from_pylist([transport_row(some, "broken", info=_broken_info(error))], schema=ROW_SCHEMA)
            return
        families: dict[int, list[Sample]] = defaultdict(list)
        for sample in samples:
            families[sample.index].append(sample)
        if self.store is None:
            out = []
            for index, family in families.items():
                for member in family:
                    member.meta["_shard"] = (shards[index].start, shards[index].end)
                out.append(transport_row(shards[index], "item", pickle.dumps(family, protocol=5)))
            yield pa.Table.from_pylist(out, schema=ROW_SCHEMA)
            return
        by_shard: dict[ShardRange, list[Sample]] = defaultdict(list)
        for index, family in families.items():
            by_shard[shards[index]] += family
        out = []
        for part_shard, members in by_shard.items():
            path = self.store.write_part(part_shard, members)
            stats = {name: s.to_dict() for name, s in ordered_stats(members, self.meta.stage_order).items()}
            out.append(transport_row(part_shard, "part", info={"path": path, "items": len({m.index for m in members}), "stages": stats}))
        yield pa.Table.from_pylist(out, schema=ROW_SCHEMA)


def _shard_of(sample: Sample) -> ShardRange:
    start, end = sample.meta.pop("_shard")
    return ShardRange(start, end)


def _broken_info(error: StageBroken) -> dict[str, str]:
    return {"stage": error.stage, "message": str(error), "trace": error.trace}


#: Segments already built in this worker process, so a task step thaws the plan and builds its
#: stages once per worker rather than once per call (Ray reuses task worker processes).
_SEGMENTS: dict[tuple[str, str], Segment] = {}


class TaskSegment:
    """Task flavour of :class:`Segment` (CPU stages only): built on first use in each worker process."""

    def __init__(self, plan_json: str, steps: list[Step], meta: BuildMeta) -> None:
        self.args = (plan_json, steps, meta)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        key = (self.args[0], repr(self.args[1:]))
        if key not in _SEGMENTS:
            _SEGMENTS.clear()  # one build at a time per worker; never grow without bound
            _SEGMENTS[key] = Segment(*self.args)
        yield from _SEGMENTS[key](batch)
