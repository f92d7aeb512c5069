"""Stall detection: a build that stops advancing stops, and says which steps wait on what.

Two clocks watch a Ray build. Ray Data's own no-progress guard
(``DataContext.execution_no_progress_timeout_s``) sees every operator's queues and raises
``ExecutionTimeoutError`` when none moved; the driver's :class:`StallWatch` covers what runs
beside Ray Data (the commit tasks). Either way the message is made here, while the stalled
workers still hold what they hold: free resources, the demands the raylets cannot grant (from
the GCS, which answers with or without a dashboard), and, when the cluster runs a dashboard,
the tasks and actors behind them from Ray's state API. Committed shards stay as they are.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from crispedit.engine.resources import ResourcePlan


class BuildStalled(RuntimeError):
    """No item advanced for ``execution.stall_timeout_s`` while work was pending."""


class StallWatch:
    def __init__(self, stall_s: float | None, plan: ResourcePlan, log: logging.Logger) -> None:
        self.stall_s = stall_s or None
        self.plan = plan
        self.log = log
        self.last = time.monotonic()
        #: How long the driver waits for one event before it looks at the clock again.
        self.poll_s = None if self.stall_s is None else min(5.0, self.stall_s / 4)

    def progress(self) -> None:
        self.last = time.monotonic()

    def check(self, waiting: str) -> None:
        """Raise :class:`BuildStalled` when nothing advanced for too long while ``waiting`` is pending."""
        if self.stall_s is not None and time.monotonic() - self.last > self.stall_s:
            raise BuildStalled(self.diagnose(f"{waiting} pending, none finished"))

    def diagnose(self, detail: str) -> str:
        lines = [f"the build stalled: nothing advanced for {self.stall_s:g}s while work was pending ({_first_line(detail)})"]
        lines += _ray_data_lines(detail, [s.label for s in self.plan.steps])
        try:
            lines += _cluster_lines(self.plan)
        except Exception as error:  # the diagnosis must never hide the stall itself
            lines.append(f"  (could not read the cluster's state: {type(error).__name__}: {error})")
        lines.append(
            "Committed shards are kept; a rerun builds the rest. If a batch legitimately takes longer, "
            "raise execution.stall_timeout_s; if a step waits on resources, change execution.stages.NAME "
            "(num_cpus, num_gpus, memory_gb, min_actors) or run on a larger cluster."
        )
        return "\n".join(lines)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


_OP = re.compile(r"^\s*- (?P<op>.+?): (?P<active>\d+) active task\(s\), (?P<done>\d+) finished, (?P<taken>\d+) outputs taken")


def _ray_data_lines(detail: str, labels: list[str]) -> list[str]:
    """Ray Data's per-operator lines, named by our steps (its operators are ours, in order, plus its input)."""
    ops = [m for m in map(_OP.match, detail.splitlines()) if m]
    if not ops:
        return []
    if len(ops) == len(labels) + 1:
        ops = ops[1:]  # the input buffer
    if len(ops) != len(labels):
        return ["  Ray Data: " + "; ".join(m.group(0).strip("- ") for m in ops)]
    return [f"  step {label}: {m['active']} task(s) in flight, {m['done']} finished, {m['taken']} outputs taken"
            for label, m in zip(labels, ops, strict=True)]


def _cluster_lines(plan: ResourcePlan) -> list[str]:
    import ray

    free = ray.available_resources()
    total = ray.cluster_resources()
    out = ["  free: " + ", ".join(f"{free.get(k, 0.0):g} of {total.get(k, 0.0):g} {k}" for k in ("CPU", "GPU") if total.get(k))]
    demands = _pending_demands(ray.get_runtime_context().gcs_address)
    for bundle, count in demands:
        wanted = {k: v for k, v in bundle.items() if k in ("CPU", "GPU", "memory")}
        steps = [s.label for s in plan.steps if _matches(s.num_cpus, s.num_gpus, wanted)]
        if not steps and _matches(plan.commit_cpus, 0.0, wanted):
            steps = ["commit"]
        who = f" (step {' or '.join(steps)})" if steps else ""
        out.append(f"  waiting for resources: {count} x {_fmt(wanted)}{who}")
    out += _state_api_lines(ray.get_runtime_context().gcs_address)
    return out


def _pending_demands(gcs_address: str) -> list[tuple[dict[str, float], int]]:
    """Resource shapes that tasks and actors wait for, from the GCS (``ray status``'s "Pending" list)."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(gcs_address)
    return [(dict(r.bundle), int(r.count)) for d in status.resource_demands.ray_task_actor_demand for r in d.bundles_by_count]


def _state_api_lines(gcs_address: str) -> list[str]:
    """Which tasks wait and which actors hold CPUs/GPUs, when the cluster runs Ray's dashboard.

    The address is this cluster's own: left to itself the state API looks for any local
    cluster, and on a shared machine that may be somebody else's.
    """
    try:
        from ray.util.state import list_actors, list_tasks

        waiting = list_tasks(address=gcs_address, filters=[("state", "=", "PENDING_NODE_ASSIGNMENT")], detail=True, timeout=5)
        actors = list_actors(address=gcs_address, filters=[("state", "=", "ALIVE")], detail=True, timeout=5)
    except Exception:  # no dashboard (crispedit starts Ray without one): the GCS lines above stand alone
        return []
    out = [f"  task {t.name} waits for {_fmt(t.required_resources)}" for t in waiting if t.required_resources]
    holders = [a for a in actors if any((a.required_resources or {}).get(k) for k in ("CPU", "GPU"))]
    out += [f"  actor {a.class_name} (pid {a.pid}) holds {_fmt(a.required_resources or {})}" for a in holders]
    return out


def _matches(cpus: float, gpus: float, wanted: dict[str, float]) -> bool:
    return abs(wanted.get("CPU", 0.0) - cpus) < 1e-3 and abs(wanted.get("GPU", 0.0) - gpus) < 1e-3


def _fmt(resources: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU", "memory")) + "}"
