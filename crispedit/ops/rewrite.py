"""A new committed dataset from a finished build, each row's status decided again: what refilter and dedupe share.

Rows are copied through as they are (image bytes included; nothing is decoded or
re-encoded), with each row's stage and reason set by a verdict, and written through the
same shard writer and commit protocol as a build: rows in build order, the same bytes on
every run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from crispedit.core.outputs import OutputRefused, claim, marker_for, replace_folder
from crispedit.core.reader import BuildReader
from crispedit.core.redact import scrub_data, scrub_text
from crispedit.core.sample import IMAGE_COLUMNS
from crispedit.core.shards import BUILD_PATTERNS, ORDER_COLUMN, ShardRange, ShardStore, legacy_marker, read_markers
from crispedit.core.stats import StageStats, summarize
from crispedit.core.storage import Output

log = logging.getLogger("crispedit")


class RefilterError(RuntimeError):
    """The request cannot be honoured as asked (missing score columns, an unknown stage...)."""


@dataclass(frozen=True)
class Verdict:
    """A row's new status: kept (``stage`` None) or rejected by ``stage`` for ``reason``."""

    stage: str | None = None
    reason: str | None = None


KEEP = Verdict()


def open_build(location: str | Path) -> BuildReader:
    """A build to rewrite: it must have the manifest a rewrite copies."""
    reader = BuildReader(location)
    if not reader.manifest:
        raise RefilterError(f"{reader.output.url} is not a crispedit output (no manifest.json)")
    if reader.problems:  # bounded reading refused a file of it (a recipe.yaml bomb, say)
        raise RefilterError(reader.problems[0])
    return reader


def _provenance_ref(text: str | None) -> str | None:
    try:
        source = json.loads(text or "{}").get("source") or {}
    except ValueError:
        return None
    ref = source.get("ref") if isinstance(source, dict) else None
    return str(ref) if ref is not None else None


def _has_images(row: dict[str, Any]) -> bool:
    return row.get("source_image") is not None or row.get("target_image") is not None


RowVerdict = Callable[[dict[str, Any]], Verdict | None]
Restats = Callable[[list[dict[str, Any]], list[tuple[dict[str, Any], Verdict]]], list[dict[str, Any]]]


def rewrite_build(
    src: str | Path,
    dst: str | Path,
    verdict: RowVerdict,
    *,
    restats: Restats | None = None,
    recipe: dict[str, Any] | None = None,
    overwrite: bool = False,
    note: dict[str, Any] | None = None,
    stages: list[dict[str, Any]] | None = None,
    kind: str = "refilter",
    plots: bool = True,
    findings: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write ``dst`` from ``src``'s committed shards with each row's status set by ``verdict``.

    ``dst`` is claimed as a crispedit output of ``kind`` (:mod:`crispedit.core.outputs`): a new or
    empty folder, or an earlier ``kind`` output that this replaces when ``overwrite`` is set or
    the request is the same; the new dataset is written beside it and swapped in.

    ``verdict(row)`` sees a row without its image columns (scores, provenance, id, stage and
    reason; ``has_images``, and ``stored``: which image columns it holds) and returns None to
    leave it as it is, or its new status. ``findings()``, called once every row is decided, adds
    what the verdicts found (refilter's rows a rule did not apply to) to ``summary.json``'s
    ``derived_from`` and to the report.
    ``restats(old stage entries, [(row, new status)])`` gives a shard's new per-stage counts;
    ``stages`` replaces ``manifest["stages"]`` when the rows were decided by other stages.
    """
    reader = open_build(src)
    manifest = {**reader.manifest, "derived_from": {"from": reader.output.url, **(note or {})}}
    if stages is not None:  # what the new dataset's rows were decided by
        manifest["stages"] = stages
    try:
        target = claim(dst, kind, reads=[reader.output.location], legacy=legacy_marker)
        target.check_replace(overwrite, same=target.previous is not None and _manifest(target.url) == scrub_data(manifest))
    except OutputRefused as error:
        raise RefilterError(str(error)) from None
    changed = Counter[str]()
    with replace_folder(target, marker_for(kind, patterns=BUILD_PATTERNS)) as where:
        out = Output(where)
        out.write_text("manifest.json", json.dumps(scrub_data(manifest), indent=1))
        store = ShardStore(where, reader.score_columns)
        for shard in reader.shards():
            table, rows = _combined(reader, shard, store)
            row_stages: list[str | None] = []
            reasons: list[str | None] = []
            decided: list[tuple[dict[str, Any], Verdict]] = []
            for row in rows:
                new = verdict(row)
                status = new if new is not None else Verdict(row["stage"], row["reason"])
                if (status.reason is None) != (row["reason"] is None):
                    changed["restored" if status.reason is None else "dropped"] += 1
                row_stages.append(status.stage if status.reason is not None else None)
                reasons.append(status.reason)
                decided.append((row, status))
            table = table.set_column(table.schema.get_field_index("stage"), "stage", pa.array(row_stages, pa.string()))
            table = table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
            old = [dict(s) for s in reader.marker(shard).get("stages", [])]
            entries = restats(old, decided) if restats is not None else old
            store.commit(shard, [table], {e["name"]: _stats(e) for e in entries})
        found = findings() if findings is not None else {}
        summary = _summary(reader, out, {**(note or {}), **found})
        out.write_text("summary.json", scrub_text(json.dumps(summary, indent=1)))
        out.write_text("recipe.yaml", scrub_text(yaml.safe_dump(recipe if recipe is not None else reader.recipe, sort_keys=False)))
        drawn: list[str] = []
        if plots and out.is_local:
            from crispedit.ops.histograms import write_histograms

            drawn = [Path(p).relative_to(where).as_posix() for p in write_histograms(where).values()]
    report = {"out": target.url, "rows": summary["rows"], "rejects": summary["rejects"], "shards": summary["shards"],
              "restored": changed["restored"], "dropped": changed["dropped"], **found}
    if plots:
        report["plots"] = sorted(f"{target.url}/{name}" for name in drawn)
    return report


def check_target(src: str | Path, dst: str | Path, kind: str) -> None:
    """Refuse at once a ``--to`` that no replace could take (a user's folder, the build, a file); see rewrite_build."""
    try:
        claim(dst, kind, reads=[Output(src).location], legacy=legacy_marker)
    except OutputRefused as error:
        raise RefilterError(str(error)) from None


def _manifest(url: str) -> Any:
    try:
        return json.loads(Output(url).read_bytes("manifest.json"))
    except (OSError, ValueError):
        return None


def _stats(entry: dict[str, Any]) -> StageStats:
    return StageStats.from_dict(entry)


def _combined(reader: BuildReader, shard: ShardRange, store: ShardStore) -> tuple[pa.Table, list[dict[str, Any]]]:
    """A shard's data and rejects as one part table (the reject schema plus ``_order``), and its rows without images."""
    data = reader.data_table(shard)
    rejects = reader.rejects_table(shard)
    data_keys = reader.table_order_keys(shard, data)
    data_index = [int(k[:12]) if k is not None else None for k in data_keys]
    refs = [_provenance_ref(p) for p in data.column("provenance").to_pylist()]
    extra = {"index": pa.array(data_index, pa.int64()), "source_ref": pa.array(refs, pa.string()),
             "stage": pa.nulls(data.num_rows, pa.string()), "reason": pa.nulls(data.num_rows, pa.string())}
    for name, column in extra.items():
        data = data.append_column(name, column)
    reject_keys = reader.table_order_keys(shard, rejects)
    schema = store.reject_schema
    table = pa.concat_tables([_fitted(data, schema), _fitted(rejects, schema)])
    keys = data_keys + reject_keys
    indices = data_index + rejects.column("index").to_pylist()
    untraced = 0
    for i, key in enumerate(keys):
        if key is None:  # after every traced row of the shard, in file order (data first)
            last = indices[i] if indices[i] is not None else shard.end - 1
            keys[i] = f"{max(last, shard.end - 1):012d}~{untraced:09d}"
            untraced += 1
    if untraced:
        log.warning("shard %s: %d rows whose ids do not derive from the build's fingerprint keep their file order", shard.name, untraced)
    table = table.append_column(ORDER_COLUMN, pa.array(keys, pa.string()))
    plain = table.drop_columns([c for c in IMAGE_COLUMNS if c in table.column_names])
    rows = plain.to_pylist()
    valid = {c: pc.is_valid(table.column(c)).to_pylist() for c in IMAGE_COLUMNS if c in table.column_names}
    for n, row in enumerate(rows):
        row["stored"] = {c for c, flags in valid.items() if flags[n]}
        row["has_images"] = bool(row["stored"] & {"source_image", "target_image"})
    return table, rows


def _fitted(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema``'s columns; a column an older build did not write yet (``turn``, ``lineage``) is null."""
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def _summary(reader: BuildReader, target: Output, note: dict[str, Any] | None) -> dict[str, Any]:
    summary = summarize(read_markers(target))
    total = reader.summary.get("shards_total", len(reader.markers))
    summary.update(recipe=reader.manifest.get("recipe"), fingerprint=reader.fingerprint, shards_total=total,
                   complete=summary["shards"] == total, derived_from={"from": reader.output.url, **(note or {})})
    return summary
