"""What a finished (or partial) build says about itself: its shards, summary and stages as they ran.

``publish``, the dataset card, ``preview``, the histograms and ``refilter`` all need the same
facts: which shards count, the summary, the stages with their parameters, score columns,
thresholds and models. The files are read by :class:`crispedit.core.reader.BuildReader`
(a local directory or an object store); the stages come from ``manifest["stages"]``, what the
engine ran (filter chains expanded, ``--tiny`` applied). Builds written before the manifest
had them fall back to their ``recipe.yaml``, with filter chains found by name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crispedit.core.bounds import Bounds
from crispedit.core.presets import PresetNotFound, find_preset
from crispedit.core.reader import BuildReader, Shard
from crispedit.core.stage import BuildContext, FilterStage, Stage

log = logging.getLogger("crispedit")



@dataclass
class StageInfo:
    """One pipeline stage of a build: as it ran, and what its class says about it (when the kind is known)."""

    name: str
    kind: str
    params: dict[str, Any]
    columns: list[str] = field(default_factory=list)
    thresholds: dict[str, Bounds] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    cites: list[str] = field(default_factory=list)
    #: The stage constructed from ``params`` (never set up), or None for an unknown kind or changed schema.
    stage: Stage | None = None

    @property
    def is_filter(self) -> bool:
        return isinstance(self.stage, FilterStage)


@dataclass
class BuildInfo:
    reader: BuildReader
    shards: list[Shard]
    shards_total: int
    stages: list[StageInfo]

    @property
    def out_dir(self) -> Path:
        return Path(self.reader.output.root)

    @property
    def summary(self) -> dict[str, Any]:
        return self.reader.summary

    @property
    def manifest(self) -> dict[str, Any]:
        return self.reader.manifest

    @property
    def recipe(self) -> dict[str, Any]:
        return self.reader.recipe

    @property
    def complete(self) -> bool:
        return bool(self.summary.get("complete", True)) and len(self.shards) >= self.shards_total

    @property
    def name(self) -> str:
        return str(self.recipe.get("name") or self.manifest.get("recipe") or self.summary.get("recipe") or self.out_dir.name)

    @property
    def score_columns(self) -> list[str]:
        columns = list(self.manifest.get("score_columns") or [])
        for stage in self.stages:
            columns += [c for c in stage.columns if c not in columns]
        return columns

    @property
    def thresholds(self) -> dict[str, Bounds]:
        out: dict[str, Bounds] = {}
        for stage in self.stages:
            out.update(stage.thresholds)
        return out

    def data_files(self) -> list[Path | str]:
        return [s.data for s in self.shards]

    def rejects_files(self) -> list[Path | str]:
        return [s.rejects_file for s in self.shards]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def rejects(self) -> int:
        return sum(s.rejects for s in self.shards)


def read_build(location: str | Path) -> BuildInfo:
    """Everything publish, the card and preview need, from an output directory or URL."""
    reader = BuildReader(location)
    shards = reader.committed()
    return BuildInfo(reader, shards, reader.shards_total, build_stages(reader))


# --- the stages of a build ------------------------------------------------------------------------


def build_stages(reader: BuildReader) -> list[StageInfo]:
    """The stages as the build ran them: ``manifest["stages"]``, or the recipe's for older builds."""
    recipe = reader.recipe
    tiny = bool(reader.manifest.get("tiny"))
    context = BuildContext(recipe_name=str(recipe.get("name") or reader.manifest.get("recipe") or ""),
                           fingerprint=reader.fingerprint, seed=int(recipe.get("seed") or 0), tiny=tiny)
    ran = reader.manifest.get("stages")
    if isinstance(ran, list):
        entries = [{"kind": s.get("kind"), "name": s.get("name"), **(s.get("params") or {})} for s in ran if isinstance(s, dict)]
        return [stage_info(raw, context, tiny=False) for raw in entries]  # as they ran: --tiny already applied
    return [stage_info(raw, context, tiny) for raw in recipe_stages(recipe, reader)]


def recipe_stages(recipe: dict[str, Any], reader: BuildReader) -> list[dict[str, Any]]:
    """A recipe's stage entries, ``include:`` and ``filters:`` chains expanded (builds made before manifest stages)."""
    entries: list[dict[str, Any]] = []
    for entry in recipe.get("stages") or []:
        if isinstance(entry, dict) and "include" in entry:
            entries += _chain_or_placeholder(str(entry["include"]), reader)
        elif isinstance(entry, dict):
            entries.append(entry)
    for name in recipe.get("filters") or []:
        entries += _chain_or_placeholder(str(name), reader)
    return entries


def _chain_or_placeholder(name: str, reader: BuildReader) -> list[dict[str, Any]]:
    chain = _filter_chain(name, reader)
    if chain is None:
        log.warning("filter chain %r not found; the build is described without its stages", name)
        return [{"kind": f"filters/{name}", "name": name}]
    return chain


def _filter_chain(name: str, reader: BuildReader) -> list[dict[str, Any]] | None:
    """A filter chain's stages, looked up as ``crispedit build`` looks (beside the build for a local one)."""
    from crispedit.core.located import LocatedError, load_located

    folders = [Path.cwd() / "filters"]
    if reader.output.is_local:
        root = Path(reader.output.root)
        folders = [root / "filters", root.parent / "filters", *folders]
    try:
        file = find_preset("filters", name, folders, paths=False)
    except PresetNotFound:
        return None
    try:
        chain = load_located(file).data  # bounded: a chain beside a build from elsewhere may be hostile
    except LocatedError:
        return None
    if isinstance(chain, dict) and isinstance(chain.get("stages"), list):
        return [dict(s) for s in chain["stages"] if isinstance(s, dict)]
    return None


def stage_info(raw: dict[str, Any], context: BuildContext, tiny: bool = False) -> StageInfo:
    """A stage entry (``kind``, ``name``, params) with what its class declares; the entry as written for an unknown kind."""
    kind = str(raw.get("kind"))
    name = str(raw.get("name") or kind)
    params = {k: v for k, v in raw.items() if k not in ("kind", "name")}
    info = StageInfo(name=name, kind=kind, params=params)
    try:
        from crispedit.models.spec import tiny_swap
        from crispedit.recipe.catalog import STAGES

        cls = STAGES.get(kind)
        if cls is None:
            return info
        validated = cls.Params.model_validate(tiny_swap(params) if tiny else params, context={"recipe_dir": Path.cwd()})
        info.params = validated.model_dump(mode="json")
        stage = cls(validated, context, name)
        info.stage = stage
        info.cites = [str(c) for c in cls.cites]
        info.columns = list(stage.score_columns())
        info.models = {k: str(v) for k, v in stage.model_ids().items()}
        info.thresholds = dict(stage.thresholds()) if isinstance(stage, FilterStage) else infer_thresholds(info.params, info.columns)
    except Exception as error:  # a plugin kind or a changed schema: describe what the build says
        log.debug("stage %s (%s): %s", name, kind, error)
    return info


_BOUND = re.compile(r"^(?:(min|max)_(.+)|(.+)_(min|max))$")


def infer_thresholds(params: dict[str, Any], columns: list[str]) -> dict[str, Bounds]:
    """``min_X``/``max_X`` (or ``X_min``/``X_max``) parameters matched to the one score column named like X."""
    found: dict[str, list[float | None]] = {}
    for key, value in params.items():
        match = _BOUND.match(key)
        if not match or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        side = match.group(1) or match.group(4)
        stem = match.group(2) or match.group(3)
        candidates = [c for c in columns if c == stem or c.endswith(f"_{stem}") or c.startswith(f"{stem}_")]
        if len(candidates) == 1:
            bounds = found.setdefault(candidates[0], [None, None])
            bounds[0 if side == "min" else 1] = float(value)
    return {column: (lo, hi) for column, (lo, hi) in found.items()}
