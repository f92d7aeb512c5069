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
  score columns in the build (refilter computes no score), except on the rows their rule does
  not apply to (``FilterStage.not_applicable``: UltraEdit's mask rule on a pair without a
  mask), which pass it and are counted by reason in the report and ``summary.json``;
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
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from crispedit.core.located import LocatedError, load_located
from crispedit.core.presets import find_preset
from crispedit.core.reader import BuildReader
from crispedit.core.stage import BuildContext, FilterStage
from crispedit.ops.build_info import StageInfo, build_stages
from crispedit.ops.rewrite import KEEP, RefilterError, Verdict, check_target, open_build, rewrite_build

__all__ = ["RefilterError", "new_chain", "refilter"]


def _read_chain_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = load_located(Path(path)).data
    except LocatedError as error:
        raise RefilterError("; ".join(str(p) for p in error.problems)) from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise RefilterError(f"{path}: a filter chain is a mapping with a `stages:` list")
    return [dict(s) for s in data["stages"] if isinstance(s, dict)]


def new_chain(pipeline: list[StageInfo], filters: Path | None, reader: BuildReader) -> list[StageInfo]:
    """The filters to decide with: the build's, in order, with ``filters``' parameters where they name them."""
    tiny = bool(reader.manifest.get("tiny"))
    context = BuildContext(recipe_name=str(reader.manifest.get("recipe") or reader.recipe.get("name") or ""),
                           fingerprint=reader.fingerprint, seed=int(reader.recipe.get("seed") or 0), tiny=tiny)
    given = [] if filters is None else [_given(raw, context, tiny, filters) for raw in _read_chain_file(filters)]
    chain = [ref for ref in pipeline if ref.is_filter]
    by_name = {ref.name: i for i, ref in enumerate(chain)}
    appended: list[StageInfo] = []
    for ref in given:
        if not ref.is_filter:
            raise RefilterError(f"{filters}: stage {ref.name!r} ({ref.kind}) is not a filter; refilter re-applies filter decisions only")
        slot = by_name.get(ref.name)
        if slot is None:
            same_kind = [i for i, c in enumerate(chain) if c.kind == ref.kind]
            slot = same_kind[0] if len(same_kind) == 1 else None
        if slot is not None:
            if chain[slot].kind != ref.kind:
                raise RefilterError(f"{filters}: stage {ref.name!r} is a {ref.kind}, the build's is a {chain[slot].kind}")
            chain[slot] = replace(ref, name=chain[slot].name, stage=_renamed(ref.stage, chain[slot].name))
        else:
            appended.append(ref)
    chain += appended
    for ref in chain:
        missing = _unscored(ref, reader)
        if missing and ref.stage.not_applicable(set()) is None:  # type: ignore[union-attr]
            raise RefilterError(_no_score(ref, missing, reader))
    return chain


def _unscored(ref: StageInfo, reader: BuildReader) -> list[str]:
    """The score columns ``ref`` decides on that the build lacks."""
    stage = ref.stage
    assert isinstance(stage, FilterStage)
    needed = set(stage.thresholds()) or set(stage.score_columns())
    return sorted(needed - set(reader.score_columns))


def _no_score(ref: StageInfo, missing: list[str], reader: BuildReader, row: str | None = None) -> str:
    where = f" and row {row} is a pair its rule applies to" if row is not None else ""
    return (f"filter {ref.name!r} decides on {', '.join(missing)}, which the build did not score{where} "
            f"(it has {', '.join(reader.score_columns) or 'no scores'}); refilter computes no score: build with that filter")


def _given(raw: dict[str, Any], context: BuildContext, tiny: bool, filters: Path) -> StageInfo:
    """A stage of the ``--filters`` file, validated (an error in it is the user's to fix, not to skip)."""
    from crispedit.models.spec import tiny_swap
    from crispedit.recipe.catalog import STAGES

    kind = str(raw.get("kind"))
    name = str(raw.get("name", kind))
    params = {k: v for k, v in raw.items() if k not in ("kind", "name")}
    cls = STAGES.get(kind)
    if cls is None:
        raise RefilterError(f"{filters}: unknown stage kind {kind!r}")
    validated = cls.Params.model_validate(tiny_swap(params) if tiny else params, context={"recipe_dir": Path.cwd()})
    return StageInfo(name, kind, validated.model_dump(mode="json"), stage=cls(validated, context, name))


def _renamed(stage: Any, name: str) -> Any:
    stage.name = name
    return stage


class _Skips:
    """Rows each filter's rule did not apply to, by reason; and the filters whose scores the build lacks."""

    def __init__(self, chain: list[StageInfo], reader: BuildReader) -> None:
        self.reader = reader
        self.unscored = {ref.name: missing for ref in chain if (missing := _unscored(ref, reader))}
        self.counts: dict[str, Counter[str]] = {}

    def skips(self, ref: StageInfo, row: dict[str, Any]) -> bool:
        """True when ``ref``'s rule does not apply to ``row`` (counted); an unscored rule that applies is refused."""
        why = ref.stage.not_applicable(set(row.get("stored") or ()))  # type: ignore[union-attr]
        if why is not None:
            self.counts.setdefault(ref.name, Counter())[why] += 1
            return True
        if ref.name in self.unscored:
            raise RefilterError(_no_score(ref, self.unscored[ref.name], self.reader, str(row.get("id"))))
        return False

    def findings(self) -> dict[str, Any]:
        return {"not_applicable": {name: dict(sorted(c.items())) for name, c in sorted(self.counts.items())}} if self.counts else {}


def _decide(chain: list[StageInfo], row: dict[str, Any], columns: list[str], knees: dict[str, float] | None = None,
            skips: _Skips | None = None) -> Verdict:
    scores = {c: row.get(c) for c in columns}
    for ref in chain:
        stage = ref.stage
        assert isinstance(stage, FilterStage)
        if skips is not None and skips.skips(ref, row):
            continue
        reason = stage.decide({c: scores.get(c) for c in stage.score_columns()})
        if reason is None:
            reason = _below_knee(stage, scores, knees or {})
        if reason is not None:
            provenance = json.loads(row.get("provenance") or "{}")
            return Verdict(ref.name, stage.annotate(reason, provenance))
    return KEEP


def _below_knee(stage: FilterStage, scores: dict[str, Any], knees: dict[str, float]) -> str | None:
    """The survival-knee threshold of a score this stage owns (``--threshold-from-survival``)."""
    for column in stage.score_columns():
        if column in knees:
            value = scores.get(column)
            if value is None or value != value:
                return f"below survival knee: {column} missing"
            if value < knees[column]:
                return f"below survival knee: {column} {value:g} < {knees[column]:g}"
    return None


def refilter(src: str | Path, filters: str | Path | None, dst: str | Path, overwrite: bool = False, plots: bool = True,
             survival: list[str] | None = None) -> dict[str, Any]:
    """Write ``dst``: ``src`` decided again with the filter parameters of ``filters`` (see the module docstring).

    ``survival`` names scores whose survival knee (crispedit.ops.report) becomes a further lower bound, applied by
    the chain's stage that owns the score; ``filters`` None keeps the build's own chain.
    """
    from crispedit.ops.report import knee_of

    reader = open_build(src)
    check_target(src, dst, "refilter")
    pipeline = build_stages(reader)
    chain = new_chain(pipeline, find_preset("filters", filters) if filters is not None else None, reader)
    knees = {column: knee_of(src, column) for column in survival or []}
    owned = {c for ref in chain for c in ref.stage.score_columns()}  # type: ignore[union-attr]
    for column in knees:
        if column not in owned:
            raise RefilterError(f"--threshold-from-survival {column}: no filter of the chain scores it (it scores {', '.join(sorted(owned))})")
    names = [ref.name for ref in pipeline]
    filters_after = {}
    for i, ref in enumerate(pipeline):
        filters_after[ref.name] = all(later.is_filter for later in pipeline[i + 1 :])
    restorable = {ref.name for ref in pipeline if ref.is_filter and filters_after[ref.name]}
    columns = reader.score_columns
    skips = _Skips(chain, reader)

    def verdict(row: dict[str, Any]) -> Verdict | None:
        if row["reason"] is None or (row["stage"] in restorable and row["has_images"]):
            return _decide(chain, row, columns, knees, skips)
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
    note = {"refilter": str(Path(filters)) if filters is not None else None, "knees": knees, "chain": [{"name": f.name, "kind": f.kind, "params": f.params} for f in chain]}
    return rewrite_build(src, dst, verdict, restats=restats, recipe=recipe, overwrite=overwrite, note=note,
                         stages=_effective_stages(pipeline, chain), plots=plots, findings=skips.findings)


def _effective_recipe(recipe: dict[str, Any], pipeline: list[StageInfo], chain: list[StageInfo]) -> dict[str, Any]:
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


def _effective_stages(pipeline: list[StageInfo], chain: list[StageInfo]) -> list[dict[str, Any]]:
    """``manifest["stages"]`` of the new dataset: the build's stages with the new filters in place."""
    replaced = {ref.name: ref for ref in chain}
    stages = [replaced.pop(ref.name, ref) for ref in pipeline] + list(replaced.values())
    return [{"kind": s.kind, "name": s.name, "params": s.params} for s in stages]
