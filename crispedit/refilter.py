"""``crispedit refilter``: re-apply filter thresholds to a finished build, without models or images.

Every filter keeps its scores on every row, rejects included (a filter scores the samples an
earlier filter rejected, and rejects keep their images by default). So other thresholds can
be applied after the fact: this reads each committed shard's data and rejects, decides again
with the new filter parameters (``FilterStage.decide``, which needs no model), and writes a new
committed dataset with the same layout and commit protocol. Image bytes are copied through
as they are; nothing is decoded or re-encoded.

Which rows are decided again, and with what:

* the chain is the build's own filter stages in pipeline order, each with its parameters
  replaced by the stage of the same name in ``--filters`` (or, failing a name, the one stage
  of the same kind); stages of ``--filters`` the build lacks run last, and must find their
  score columns in the build (refilter computes no score);
* every data row, and every reject made by a filter stage that no non-filter stage follows
  in the pipeline (only those were fully processed) and that kept its images
  (``output.reject_images``), is decided again: it is kept, or rejected by the first stage
  of the chain that refuses it. Loosening brings rejects back; tightening drops rows;
* every other reject (a generation failure, a dedupe drop, a ``select`` loser) stays as it is.

Row order: a shard's rows are sorted as the build sorted them, by item index and child
position. Data rows do not store those, so they are recovered from the ids, which derive
from the build's fingerprint (``sample_id(fingerprint, index)``; a child's from its parent's
id and position). A row whose id cannot be traced (none in crispedit's own builds) keeps its
file order after the rest of the shard. Same input, same filters: the same bytes.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from crispedit.outputs import OutputRefused, claim, marker_for, replace_folder
from crispedit.recipe_yaml import RecipeError, load_located, parse_located
from crispedit.redact import scrub_data, scrub_text
from crispedit.sample import child_id, sample_id
from crispedit.shards import (
    BUILD_PATTERNS,
    DATA_DIR,
    ORDER_COLUMN,
    REJECTS_DIR,
    ShardRange,
    ShardStore,
    legacy_marker,
    read_markers,
)
from crispedit.storage import Output

log = logging.getLogger("crispedit")

#: How many child positions of one parent are tried when tracing a child's id back.
MAX_CHILDREN = 4096


class RefilterError(RuntimeError):
    """The request cannot be honoured as asked (missing score columns, an unknown stage...)."""


@dataclass(frozen=True)
class Verdict:
    """A row's new status: kept (``stage`` None) or rejected by ``stage`` for ``reason``."""

    stage: str | None = None
    reason: str | None = None


KEEP = Verdict()


# --- reading a build ----------------------------------------------------------------------------


class BuildReader:
    """The committed shards of an output (local directory or URL), read table by table."""

    def __init__(self, location: str | Path) -> None:
        self.output = Output(location)
        try:
            self.manifest: dict[str, Any] = json.loads(self.output.read_bytes("manifest.json"))
        except FileNotFoundError:
            raise RefilterError(f"{self.output.url} is not a crispedit output (no manifest.json)") from None
        try:
            self.recipe: dict[str, Any] = parse_located(self.output.read_bytes("recipe.yaml").decode("utf-8"), "recipe.yaml").data or {}
        except FileNotFoundError:
            self.recipe = {}
        except (RecipeError, UnicodeDecodeError) as error:
            raise RefilterError(f"{self.output.url}/recipe.yaml: {error}") from None
        try:
            self.summary: dict[str, Any] = json.loads(self.output.read_bytes("summary.json"))
        except (FileNotFoundError, ValueError):
            self.summary = {}
        self.markers = sorted(read_markers(self.output), key=lambda m: m["start"])
        self.score_columns: list[str] = list(self.manifest.get("score_columns") or [])
        self.fingerprint: str = str(self.manifest.get("fingerprint", ""))

    def shards(self) -> list[ShardRange]:
        return [ShardRange(int(m["start"]), int(m["end"])) for m in self.markers]

    def marker(self, shard: ShardRange) -> dict[str, Any]:
        return next(m for m in self.markers if m["start"] == shard.start and m["end"] == shard.end)

    def _table(self, key: str) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.output.read_bytes(key)))

    def data_table(self, shard: ShardRange) -> pa.Table:
        return self._table(self.output.join(DATA_DIR, f"{shard.name}.parquet"))

    def rejects_table(self, shard: ShardRange) -> pa.Table:
        return self._table(self.output.join(REJECTS_DIR, f"rejects-{shard.suffix}.parquet"))

    def order_keys(self, shard: ShardRange, ids: list[str], parent_ids: list[str | None]) -> list[str | None]:
        """Each row's build order key (``Sample.order_key``), traced back from its id; None when untraceable."""
        roots = {sample_id(self.fingerprint, i): i for i in range(shard.start, shard.end)}
        children: dict[str, dict[str, int]] = {}

        def position(parent: str, child: str) -> int | None:
            known = children.setdefault(parent, {})
            if child in known:
                return known[child]
            for p in range(len(known), MAX_CHILDREN):
                known[child_id(parent, p)] = p
                if child in known:
                    return known[child]
            return None

        keys: list[str | None] = []
        for row_id, parent in zip(ids, parent_ids, strict=True):
            if row_id in roots:
                keys.append(f"{roots[row_id]:012d}")
            elif parent is not None and parent in roots and (p := position(parent, row_id)) is not None:
                keys.append(f"{roots[parent]:012d}.{p:06d}")
            else:
                keys.append(None)
        return keys


def _provenance_ref(text: str | None) -> str | None:
    try:
        source = json.loads(text or "{}").get("source") or {}
    except ValueError:
        return None
    ref = source.get("ref") if isinstance(source, dict) else None
    return str(ref) if ref is not None else None


def _has_images(row: dict[str, Any]) -> bool:
    return row.get("source_image") is not None or row.get("target_image") is not None


# --- rewriting a build ---------------------------------------------------------------------------


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
    kind: str = "refilter",
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``dst`` from ``src``'s committed shards with each row's status set by ``verdict``.

    ``dst`` is claimed as a crispedit output of ``kind`` (:mod:`crispedit.outputs`): a new or
    empty folder, or an earlier ``kind`` output that this replaces when ``overwrite`` is set or
    the request is the same; the new dataset is written beside it and swapped in.

    ``verdict(row)`` sees a row without its image columns (scores, provenance, id, stage and
    reason; ``has_images``) and returns None to leave it as it is, or its new status.
    ``restats(old stage entries, [(row, new status)])`` gives a shard's new per-stage counts.
    """
    reader = BuildReader(src)
    manifest = {**reader.manifest, "derived_from": {"from": reader.output.url, **(note or {})}}
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
            stages: list[str | None] = []
            reasons: list[str | None] = []
            decided: list[tuple[dict[str, Any], Verdict]] = []
            for row in rows:
                new = verdict(row)
                status = new if new is not None else Verdict(row["stage"], row["reason"])
                if (status.reason is None) != (row["reason"] is None):
                    changed["restored" if status.reason is None else "dropped"] += 1
                stages.append(status.stage if status.reason is not None else None)
                reasons.append(status.reason)
                decided.append((row, status))
            table = table.set_column(table.schema.get_field_index("stage"), "stage", pa.array(stages, pa.string()))
            table = table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
            old = [dict(s) for s in reader.marker(shard).get("stages", [])]
            entries = restats(old, decided) if restats is not None else old
            store.commit(shard, [table], {e["name"]: _stats(e) for e in entries})
        summary = _summary(reader, out, note)
        out.write_text("summary.json", scrub_text(json.dumps(summary, indent=1)))
        out.write_text("recipe.yaml", scrub_text(yaml.safe_dump(recipe if recipe is not None else reader.recipe, sort_keys=False)))
        drawn: list[str] = []
        if plots and out.is_local:
            from crispedit.filter_report import write_histograms

            drawn = [Path(p).relative_to(where).as_posix() for p in write_histograms(where).values()]
    report = {"out": target.url, "rows": summary["rows"], "rejects": summary["rejects"], "shards": summary["shards"],
              "restored": changed["restored"], "dropped": changed["dropped"]}
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


def _stats(entry: dict[str, Any]) -> Any:
    from crispedit.stages.base import StageStats

    return StageStats.from_dict(entry)


def _combined(reader: BuildReader, shard: ShardRange, store: ShardStore) -> tuple[pa.Table, list[dict[str, Any]]]:
    """A shard's data and rejects as one part table (the reject schema plus ``_order``), and its rows without images."""
    data = reader.data_table(shard)
    rejects = reader.rejects_table(shard)
    data_ids, data_parents = data.column("id").to_pylist(), data.column("parent_id").to_pylist()
    data_keys = reader.order_keys(shard, data_ids, data_parents)
    data_index = [int(k[:12]) if k is not None else None for k in data_keys]
    refs = [_provenance_ref(p) for p in data.column("provenance").to_pylist()]
    extra = {"index": pa.array(data_index, pa.int64()), "source_ref": pa.array(refs, pa.string()),
             "stage": pa.nulls(data.num_rows, pa.string()), "reason": pa.nulls(data.num_rows, pa.string())}
    for name, column in extra.items():
        data = data.append_column(name, column)
    reject_keys = reader.order_keys(shard, rejects.column("id").to_pylist(), rejects.column("parent_id").to_pylist())
    schema = store.reject_schema
    table = pa.concat_tables([data.select(schema.names).cast(schema), rejects.select(schema.names).cast(schema)])
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
    plain = table.drop_columns([c for c in ("source_image", "target_image", "mask") if c in table.column_names])
    rows = plain.to_pylist()
    has_src = pc.is_valid(table.column("source_image")).to_pylist()
    has_tgt = pc.is_valid(table.column("target_image")).to_pylist()
    for row, a, b in zip(rows, has_src, has_tgt, strict=True):
        row["has_images"] = bool(a or b)
    return table, rows


def _summary(reader: BuildReader, target: Output, note: dict[str, Any] | None) -> dict[str, Any]:
    from crispedit.shards import summarize

    summary = summarize(read_markers(target))
    total = reader.summary.get("shards_total", len(reader.markers))
    summary.update(recipe=reader.manifest.get("recipe"), fingerprint=reader.fingerprint, shards_total=total,
                   complete=summary["shards"] == total, derived_from={"from": reader.output.url, **(note or {})})
    return summary


# --- the pipeline of a build and the new chain -------------------------------------------------


@dataclass
class StageRef:
    """One stage of a pipeline: its name, kind, params as written, and a constructed (never set up) stage."""

    name: str
    kind: str
    params: dict[str, Any]
    stage: Any = None
    is_filter: bool = False
    origin: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _chain_folders(out: Output) -> list[Path]:
    import crispedit

    folders = [Path.cwd() / "filters", Path(crispedit.__file__).resolve().parents[1] / "filters"]
    if out.is_local:
        root = Path(out.root)
        folders = [root / "filters", root.parent / "filters", *folders]
    return folders


def _read_chain_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = load_located(Path(path)).data
    except RecipeError as error:
        raise RefilterError("; ".join(str(p) for p in error.problems)) from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise RefilterError(f"{path}: a filter chain is a mapping with a `stages:` list")
    return [dict(s) for s in data["stages"] if isinstance(s, dict)]


def _find_chain(name: str, folders: list[Path]) -> list[dict[str, Any]]:
    for folder in folders:
        if (folder / f"{name}.yaml").is_file():
            return _read_chain_file(folder / f"{name}.yaml")
    raise RefilterError(f"the build's recipe includes filter chain {name!r}, found in none of {', '.join(map(str, folders))}")


def _make(raw: dict[str, Any], context: Any, tiny: bool, origin: str) -> StageRef:
    from crispedit.models import tiny_swap
    from crispedit.stages import STAGES
    from crispedit.stages.base import FilterStage

    kind = str(raw.get("kind"))
    name = str(raw.get("name", kind))
    params = {k: v for k, v in raw.items() if k not in ("kind", "name")}
    cls = STAGES.get(kind)
    if cls is None:
        return StageRef(name, kind, params, None, False, origin)
    validated = cls.Params.model_validate(tiny_swap(params) if tiny else params, context={"recipe_dir": Path.cwd()})
    stage = cls(validated, context, name)
    return StageRef(name, kind, params, stage, isinstance(stage, FilterStage), origin)


def build_pipeline(reader: BuildReader) -> list[StageRef]:
    """The build's stages in order, filter chains (``include:`` and ``filters:``) expanded."""
    from crispedit.stages.base import BuildContext

    recipe = reader.recipe
    tiny = bool(reader.manifest.get("tiny"))
    context = BuildContext(recipe_name=str(recipe.get("name", "")), fingerprint=reader.fingerprint, seed=int(recipe.get("seed") or 0), tiny=tiny)
    folders = _chain_folders(reader.output)
    raws: list[dict[str, Any]] = []
    for entry in recipe.get("stages") or []:
        if isinstance(entry, dict) and "include" in entry:
            raws += _find_chain(str(entry["include"]), folders)
        elif isinstance(entry, dict):
            raws.append(entry)
    for name in recipe.get("filters") or []:
        raws += _find_chain(str(name), folders)
    return [_make(raw, context, tiny, "build") for raw in raws]


def new_chain(pipeline: list[StageRef], filters: Path, reader: BuildReader) -> list[StageRef]:
    """The filters to decide with: the build's, in order, with ``filters``' parameters where they name them."""
    from crispedit.stages.base import BuildContext

    tiny = bool(reader.manifest.get("tiny"))
    context = BuildContext(recipe_name=str(reader.recipe.get("name", "")), fingerprint=reader.fingerprint, seed=int(reader.recipe.get("seed") or 0), tiny=tiny)
    given = [_make(raw, context, tiny, str(filters)) for raw in _read_chain_file(filters)]
    chain = [ref for ref in pipeline if ref.is_filter]
    by_name = {ref.name: i for i, ref in enumerate(chain)}
    appended: list[StageRef] = []
    for ref in given:
        if ref.stage is None:
            raise RefilterError(f"{filters}: unknown stage kind {ref.kind!r}")
        if not ref.is_filter:
            raise RefilterError(f"{filters}: stage {ref.name!r} ({ref.kind}) is not a filter; refilter re-applies filter decisions only")
        slot = by_name.get(ref.name)
        if slot is None:
            same_kind = [i for i, c in enumerate(chain) if c.kind == ref.kind]
            slot = same_kind[0] if len(same_kind) == 1 else None
        if slot is not None:
            if chain[slot].kind != ref.kind:
                raise RefilterError(f"{filters}: stage {ref.name!r} is a {ref.kind}, the build's is a {chain[slot].kind}")
            chain[slot] = StageRef(chain[slot].name, ref.kind, ref.params, _renamed(ref.stage, chain[slot].name), True, str(filters))
        else:
            appended.append(ref)
    chain += appended
    have = set(reader.score_columns)
    for ref in chain:
        needed = set(getattr(ref.stage, "thresholds", lambda: {})()) or set(ref.stage.score_columns())
        missing = sorted(needed - have)
        if missing:
            raise RefilterError(
                f"filter {ref.name!r} decides on {', '.join(missing)}, which the build did not score "
                f"(it has {', '.join(reader.score_columns) or 'no scores'}); refilter computes no score: build with that filter"
            )
    return chain


def _renamed(stage: Any, name: str) -> Any:
    stage.name = name
    return stage


def _decide(chain: list[StageRef], row: dict[str, Any], columns: list[str]) -> Verdict:
    scores = {c: row.get(c) for c in columns}
    for ref in chain:
        reason = ref.stage.decide({c: scores.get(c) for c in ref.stage.score_columns()})
        if reason is not None:
            provenance = json.loads(row.get("provenance") or "{}")
            return Verdict(ref.name, ref.stage.annotate(reason, provenance))
    return KEEP


def refilter(src: str | Path, filters: str | Path, dst: str | Path, overwrite: bool = False, plots: bool = True) -> dict[str, Any]:
    """Write ``dst``: ``src`` decided again with the filter parameters of ``filters`` (see the module docstring)."""
    reader = BuildReader(src)
    check_target(src, dst, "refilter")
    pipeline = build_pipeline(reader)
    chain = new_chain(pipeline, Path(filters), reader)
    names = [ref.name for ref in pipeline]
    filters_after = {}
    for i, ref in enumerate(pipeline):
        filters_after[ref.name] = all(later.is_filter for later in pipeline[i + 1 :])
    restorable = {ref.name for ref in pipeline if ref.is_filter and filters_after[ref.name]}
    columns = reader.score_columns

    def verdict(row: dict[str, Any]) -> Verdict | None:
        if row["reason"] is None or (row["stage"] in restorable and row["has_images"]):
            return _decide(chain, row, columns)
        return None

    def restats(old: list[dict[str, Any]], decided: list[tuple[dict[str, Any], Verdict]]) -> list[dict[str, Any]]:
        order = [f.name for f in chain]
        delta: dict[str, dict[str, Any]] = {n: {"seen": 0, "passed": 0, "rejected": Counter()} for n in order}
        for row, status in decided:
            if not (row["reason"] is None or (row["stage"] in restorable and row["has_images"])):
                continue
            for sign, stage, reason in ((-1, row["stage"], row["reason"]), (1, status.stage if status.reason else None, status.reason)):
                for name in order:
                    if sign == -1 and name not in names:
                        break  # an appended filter never saw the row in the build
                    delta[name]["seen"] += sign
                    if name == stage:
                        delta[name]["rejected"][str(reason).split(":")[0]] += sign
                        break
                    delta[name]["passed"] += sign
        entries = {e["name"]: e for e in old}
        out = []
        for entry in old + [{"name": n, "seen": 0, "passed": 0, "rejected": {}, "seconds": 0.0} for n in order if n not in entries]:
            d = delta.get(entry["name"])
            if d is not None:
                rejected = Counter(entry.get("rejected", {}))
                rejected.update(d["rejected"])
                entry = {**entry, "seen": entry["seen"] + d["seen"], "passed": entry["passed"] + d["passed"],
                         "rejected": {k: v for k, v in sorted(rejected.items()) if v > 0}}
            out.append(entry)
        return out

    recipe = _effective_recipe(reader.recipe, pipeline, chain)
    note = {"refilter": str(Path(filters)), "chain": [{"name": f.name, "kind": f.kind, "params": f.params} for f in chain]}
    return rewrite_build(src, dst, verdict, restats=restats, recipe=recipe, overwrite=overwrite, note=note, plots=plots)


def _effective_recipe(recipe: dict[str, Any], pipeline: list[StageRef], chain: list[StageRef]) -> dict[str, Any]:
    """The build's recipe with its filter chains written out and the new parameters in place."""
    replaced = {ref.name: ref for ref in chain}
    stages = []
    for ref in pipeline:
        use = replaced.pop(ref.name, ref)
        stages.append({"kind": use.kind, **({"name": ref.name} if ref.name != use.kind else {}), **use.params})
    for ref in replaced.values():
        stages.append({"kind": ref.kind, **({"name": ref.name} if ref.name != ref.kind else {}), **ref.params})
    out = {k: v for k, v in recipe.items() if k not in ("stages", "filters")}
    out["stages"] = stages
    return out
