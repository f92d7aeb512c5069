"""The ``dedupe`` and ``decontaminate`` stages: perceptual hashes against earlier builds and benchmarks.

``dedupe`` hashes both images of a pair (pHash, kept in ``provenance.phash`` as hex so later
passes need not decode anything) and scores:

* ``phash_pair``: source-to-target distance. 0-2 bits is a no-op edit, not a duplicate;
  ``min_pair_distance`` drops those;
* ``dup_distance``: distance to the nearest pair of the earlier builds in ``against`` (the
  larger of the source and target distances), so a new build does not repeat an old one.

Duplicates *within* a build can sit in different shards, which a stage never sees together:
``crispedit dedupe OUT --to NEW`` handles them after the build (crispedit/filters/phash.py).

``decontaminate`` drops pairs whose source nearly copies an image of a benchmark a model
trained on the data may be evaluated on (Emu Edit, MagicBrush, COCO val...): an image folder,
Parquet files or a Hugging Face dataset. The matched item is named in the reject reason and
kept in ``provenance.decontaminate``. Benchmark hashes are computed once per worker and
cached under the build's cache directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from crispedit.core.bounds import Bound
from crispedit.core.sample import Sample
from crispedit.core.stage import FilterStage, StageParams, register_stage


class DedupeParams(StageParams):
    against: list[str] = Field(default_factory=list, description="output directories of earlier builds whose data rows this build must not repeat")
    max_distance: int = Field(4, ge=0, le=64, description="a pair within this many bits (source and target) of an earlier build's pair is a duplicate")
    min_pair_distance: int | None = Field(
        None, ge=0, le=64, description="reject pairs whose target is within fewer bits of its source (a no-op edit; 3 drops 0-2); null: keep",
    )


@register_stage
class DedupeStage(FilterStage[DedupeParams]):
    """pHash of both images; near-copies of earlier builds' pairs and no-op edits are dropped."""

    kind = "dedupe"
    cites: ClassVar[tuple[str, ...]] = ("imagehash pHash; imagededup's default max distance is 10 of 64 bits, copies are usually within 4",)

    def score_columns(self) -> list[str]:
        return ["phash_pair", "dup_distance"]

    def thresholds(self) -> dict[str, tuple[Bound, Bound]]:
        bounds: dict[str, tuple[Bound, Bound]] = {}
        if self.params.min_pair_distance is not None:
            bounds["phash_pair"] = (float(self.params.min_pair_distance), None)
        if self.params.against:
            bounds["dup_distance"] = (float(self.params.max_distance) + 1, None)
        return bounds

    def setup(self) -> None:
        from crispedit.filters.phash import PairIndex

        self.earlier = [PairIndex.of_build(path) for path in self.params.against]

    def _nearest(self, source: int, target: int) -> tuple[int, str, str] | None:
        """(distance, build, row id) of the closest pair of the earlier builds; ties go to the first build."""
        best: tuple[int, str, str] | None = None
        for index in self.earlier:
            found = index.nearest(source, target)
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], index.name, found[1])
        return best

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        from crispedit.filters.phash import hamming, phash, to_hex

        out: list[dict[str, float | None]] = []
        for s in batch:
            src = phash(s.source_image) if s.source_image is not None else None
            tgt = phash(s.target_image) if s.target_image is not None else None
            s.provenance["phash"] = {k: to_hex(v) for k, v in (("source", src), ("target", tgt)) if v is not None}
            row: dict[str, float | None] = {"phash_pair": float(hamming(src, tgt)) if None not in (src, tgt) else None, "dup_distance": None}
            if self.params.against and src is not None and tgt is not None:
                found = self._nearest(src, tgt)
                if found is not None:
                    row["dup_distance"] = float(found[0])
                    if found[0] <= self.params.max_distance:
                        s.provenance["dedupe"] = {"build": found[1], "id": found[2], "distance": found[0]}
            out.append(row)
        return out

    def decide(self, scores: dict[str, float | None]) -> str | None:
        p = self.params
        pair, dup = scores.get("phash_pair"), scores.get("dup_distance")
        if p.min_pair_distance is not None:
            if pair is None:
                return "no score: phash_pair needs both images"
            if pair < p.min_pair_distance:
                return f"no-op edit: target within {int(pair)} bits of its source"
        if p.against and dup is not None and dup <= p.max_distance:
            return f"duplicate: within {int(dup)} bits of a pair of an earlier build"
        return None

    def annotate(self, reason: str, provenance: dict[str, Any]) -> str:
        """The reason with the matched row of the earlier build (refilter calls this too)."""
        match = provenance.get("dedupe")
        if reason.startswith("duplicate") and isinstance(match, dict):
            return f"{reason} ({match.get('build')} row {match.get('id')})"
        return reason


class BenchmarkSet(BaseModel):
    """One benchmark image set to keep out of the training data."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="what the reject reason calls it, e.g. emu_edit_test")
    kind: Literal["folder", "parquet", "hf"] = Field(description="an image folder, Parquet file(s), or a Hugging Face dataset")
    path: str = Field(description="the folder, the Parquet file or folder of files, or the hub id / save_to_disk folder")
    column: str = Field("image", description="image column (parquet, hf)")
    ref_column: str | None = Field(None, description="column naming an item (parquet, hf); default: file and row number")
    split: str = Field("test", description="split of a Hugging Face dataset")
    revision: str | None = Field(None, description="revision of a hub dataset")


class DecontaminateParams(StageParams):
    benchmarks: list[BenchmarkSet] = Field(description="benchmark image sets whose images must not appear as sources")
    max_distance: int = Field(4, ge=0, le=64, description="a source within this many pHash bits of a benchmark image is contaminated")
    check_target: bool = Field(False, description="also compare the target image with the benchmarks")


@register_stage
class DecontaminateStage(FilterStage[DecontaminateParams]):
    """Drop pairs whose source (or target) nearly copies a benchmark image, naming the matched item."""

    kind = "decontaminate"
    in_actor_pool = True  # an index loaded once per worker, like a model
    cites: ClassVar[tuple[str, ...]] = ("none of the anchor pipelines decontaminates; benchmark list in research/filters.md section 4",)

    def score_columns(self) -> list[str]:
        return ["decon_source"] + (["decon_target"] if self.params.check_target else [])

    def thresholds(self) -> dict[str, tuple[Bound, Bound]]:
        return {c: (float(self.params.max_distance) + 1, None) for c in self.score_columns()}

    def setup(self) -> None:
        self.indexes = [benchmark_index(b, self.context.cache_dir) for b in self.params.benchmarks]

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        from crispedit.filters.phash import phash

        out: list[dict[str, float | None]] = []
        for s in batch:
            row: dict[str, float | None] = {}
            for role, column in (("source", "decon_source"), ("target", "decon_target")):
                if column not in self.score_columns():
                    continue
                image = s.source_image if role == "source" else s.target_image
                if image is None:
                    row[column] = None
                    continue
                query = phash(image)
                best: tuple[int, str, str] | None = None
                for index in self.indexes:
                    found = index.nearest(query)
                    if found is not None and (best is None or found[0] < best[0]):
                        best = (found[0], index.name, found[1])
                row[column] = float(best[0]) if best is not None else None
                if best is not None and best[0] <= self.params.max_distance:
                    s.provenance.setdefault("decontaminate", {})[role] = {"set": best[1], "item": best[2], "distance": best[0]}
            out.append(row)
        return out

    def decide(self, scores: dict[str, float | None]) -> str | None:
        for column in self.score_columns():
            value = scores.get(column)
            if value is not None and value <= self.params.max_distance:
                role = column.removeprefix("decon_")
                return f"contaminated: {role} within {int(value)} bits of a benchmark image"
        return None

    def annotate(self, reason: str, provenance: dict[str, Any]) -> str:
        """The reason with the benchmark and item matched (refilter calls this too)."""
        found = provenance.get("decontaminate") or {}
        role = "target" if reason.startswith("contaminated: target") else "source"
        match = found.get(role)
        if reason.startswith("contaminated") and isinstance(match, dict):
            return f"{reason}: {match.get('set')}/{match.get('item')}"
        return reason


def _fingerprint(spec: BenchmarkSet) -> str:
    """What decides a benchmark index's content: the spec, and the files' names, sizes and times."""
    parts: list[Any] = [spec.model_dump()]
    if spec.kind in ("folder", "parquet") and Path(spec.path).exists():
        root = Path(spec.path)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        parts += [(str(p.relative_to(root)) if p != root else p.name, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def benchmark_index(spec: BenchmarkSet, cache_dir: Path | None = None) -> Any:
    """The pHash index of one benchmark set, from the cache when its files did not change."""
    from crispedit.filters.phash import HashIndex, folder_images, hf_images, parquet_images

    cache = Path(cache_dir) / "benchmarks" / f"{spec.name}-{_fingerprint(spec)}.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            return HashIndex.from_json(cache.read_text(encoding="utf-8"))
        except (ValueError, KeyError):
            pass
    if spec.kind == "folder":
        if not Path(spec.path).is_dir():
            raise FileNotFoundError(f"benchmark {spec.name}: no folder {spec.path}")
        items = folder_images(Path(spec.path))
    elif spec.kind == "parquet":
        items = parquet_images(Path(spec.path), spec.column, spec.ref_column)
    else:
        items = hf_images(spec.path, spec.split, spec.column, spec.revision, spec.ref_column)
    index = HashIndex.of(spec.name, items)
    if len(index) == 0:
        raise ValueError(f"benchmark {spec.name}: no images found in {spec.path}")
    if cache is not None:
        from crispedit.core.storage import Output

        cache.parent.mkdir(parents=True, exist_ok=True)
        Output(cache.parent).write_text(cache.name, index.to_json())  # all or nothing, as every local write
    return index
