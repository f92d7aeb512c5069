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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crispedit.core.failures import StageBroken
from crispedit.core.library_logs import library_log
from crispedit.core.redact import scrub_text
from crispedit.core.shards import PlanTooLarge, plan_shards
from crispedit.core.source import SourceError
from crispedit.core.stats import summarize
from crispedit.core.storage import Output
from crispedit.engine.local_runner import run_local
from crispedit.engine.output import OutputInUse, claim_output, finish, manifest_of, write_manifest
from crispedit.engine.plan import (
    BuildError,
    build_meta,
    context_for,
    make_source,
    make_stage,
    placement,
    plan_stages,
    segments,
    store_for,
)
from crispedit.engine.progress import Progress
from crispedit.engine.ray_runner import run_ray
from crispedit.recipe import BuildPlan

__all__ = ["BuildError", "BuildResult", "build", "context_for", "make_stage", "segments"]

log = logging.getLogger("crispedit")


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
    models = _resolved_models(plan, meta)
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
    write_manifest(plan, store.output, manifest, models)
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
        run = run_local if chosen == "local" else run_ray
        with library_log(_library_log_path(store.output)), Progress(progress, len(todo), plan.recipe.name) as advance:
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
        from crispedit.ops.histograms import write_histograms  # matplotlib only when there is something to draw

        write_histograms(store.output.root)
    out_dir = finish(store.output.url, replaces, summary["complete"] and not failed)
    return BuildResult(out_dir, len(shards), len(todo) - len(failed), skipped, time.perf_counter() - started, summary, failed)


def _resolved_models(plan: BuildPlan, meta: Any) -> dict[str, Any]:
    """The commit every Hub model resolves to, checked against its pin before anything is written.

    Recorded in manifest.json (``models``: id, revision, commit per stage and key; local folders as
    paths) and in every row's provenance (``model_commits``: ``id@revision`` -> commit).
    """
    from crispedit.models.hub import RevisionMismatch, resolved_models

    try:
        models = resolved_models(plan_stages(plan))
    except RevisionMismatch as error:
        raise BuildError(str(error)) from None
    commits = {f"{m['id']}@{m['revision']}" if m.get("revision") else m["id"]: m["commit"]
               for keys in models.values() for m in keys.values() if "id" in m}
    if commits:
        meta.provenance["model_commits"] = commits
    return models


def _library_log_path(output: Output) -> str | None:
    """OUT/logs/libraries.log for a local output when not verbose (``-v`` leaves the libraries on the console)."""
    if log.isEnabledFor(logging.INFO) or not output.is_local:
        return None
    return str(Path(output.root) / "logs" / "libraries.log")


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
