"""The in-process runner: every step fused into one segment, called shard by shard."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from crispedit.core.failures import StageBroken
from crispedit.core.shards import ShardRange
from crispedit.engine.plan import SOURCE, WRITE, BuildMeta, gpu_warnings, placement
from crispedit.engine.segment import ROW_SCHEMA, Segment, transport_row
from crispedit.recipe import BuildPlan, freeze_plan


def run_local(
    plan: BuildPlan, meta: BuildMeta, todo: list[ShardRange], advance: Callable[[dict[str, Any]], None],
    warnings: list[str], **_: Any,
) -> dict[str, str]:
    """Every step fused into one segment, called shard by shard: the Ray code path, minus Ray."""
    warnings += gpu_warnings(plan, _local_gpus(plan), "this machine")
    segment = Segment(freeze_plan(plan), [SOURCE, *range(len(plan.stages)), WRITE], meta)
    failed: dict[str, str] = {}
    for shard in todo:
        request = pa.Table.from_pylist([transport_row(shard, "range")], schema=ROW_SCHEMA)
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
