"""Perceptual dedupe and benchmark decontamination on real photographs (scikit-image's bundled ones)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data as photos

from crispedit.core.sample import Sample, sample_id
from crispedit.core.stage import BuildContext
from crispedit.engine import build
from crispedit.engine.run import apply_stage
from crispedit.filters.dedupe import DecontaminateParams, DecontaminateStage, DedupeParams, DedupeStage
from crispedit.filters.phash import PairHash, hamming, near_duplicates, phash
from crispedit.ops.dedupe import dedupe_build
from crispedit.recipe import load_plan
from tests.helpers.recipes import write_recipe

NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")


def photo(name: str, side: int = 128) -> np.ndarray:
    image = getattr(photos, name)()
    picture = Image.fromarray(image).convert("RGB")
    picture.thumbnail((side, side))
    return np.asarray(picture)


def recompressed(image: np.ndarray, scale: float = 0.5, quality: int = 60) -> np.ndarray:
    picture = Image.fromarray(image)
    picture = picture.resize((int(picture.width * scale), int(picture.height * scale)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def test_resized_and_recompressed_copies_are_near_and_distinct_photos_far() -> None:
    for name in NAMES:
        original = photo(name)
        for scale, quality in ((0.5, 60), (1.5, 40), (0.3, 85)):
            assert hamming(phash(original), phash(recompressed(original, scale, quality))) <= 4, (name, scale, quality)
    hashes = [phash(photo(n)) for n in NAMES]
    far = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(far) > 12, far


def test_the_first_copy_in_build_order_survives_whatever_the_input_order() -> None:
    a, b, c = (phash(photo(n)) for n in ("astronaut", "coffee", "chelsea"))
    copy = phash(recompressed(photo("astronaut")))
    rows = [("000000000003", "late", PairHash(copy, b)), ("000000000001", "first", PairHash(a, b)),
            ("000000000002", "other", PairHash(a, c)), ("000000000004", "nohash", PairHash(None, b))]
    for shuffled in (rows, rows[::-1], rows[1:] + rows[:1]):
        assert near_duplicates(shuffled, 4) == {"late": ("first", hamming(a, copy))}
        assert near_duplicates(shuffled, 12) == near_duplicates(shuffled, 4)  # the unbanded search agrees


def test_rows_whose_order_key_is_unknown_come_last_by_id() -> None:
    a, b = phash(photo("astronaut")), phash(photo("coffee"))
    rows = [(None, "y", PairHash(a, b)), (None, "x", PairHash(a, b)), ("000000000007", "z", PairHash(a, b)),
            ("000000000001", "w", PairHash(b, a))]
    assert near_duplicates(rows, 4) == {"x": ("z", 0), "y": ("z", 0)}
    assert list(near_duplicates(rows, 4)) == ["x", "y"]  # in build order


def pair(i: int, source: np.ndarray, target: np.ndarray | None = None) -> Sample:
    return Sample(id=sample_id("dedupe", i), index=i, source_ref=str(i), source_image=source,
                  target_image=source[:, ::-1].copy() if target is None else target)


def test_decontamination_drops_a_source_copied_from_a_benchmark_folder(tmp_path: Path) -> None:
    bench = tmp_path / "bench" / "val"
    bench.mkdir(parents=True)
    Image.fromarray(recompressed(photo("coffee"), 0.75, 70)).save(bench / "coffee_000123.jpg", quality=70)
    Image.fromarray(photo("rocket")).save(bench / "rocket.png")
    (bench / "notes.txt").write_text("not an image")
    params = DecontaminateParams(benchmarks=[{"name": "magicbrush_test", "kind": "folder", "path": str(tmp_path / "bench")}])
    stage = DecontaminateStage(params, BuildContext("d", "d", 0, cache_dir=tmp_path / "cache"))
    stage.setup()
    batch = [pair(0, photo("astronaut")), pair(1, photo("coffee")), pair(2, photo("chelsea"))]
    out = apply_stage(stage, "decontaminate", batch, batch_size=8)
    assert [s.alive for s in out] == [True, False, True]
    reason = out[1].reject.reason
    assert reason.startswith("contaminated: source within ") and reason.endswith("of a benchmark image: magicbrush_test/val/coffee_000123.jpg")
    assert out[1].provenance["decontaminate"]["source"]["item"] == "val/coffee_000123.jpg"
    assert out[0].scores["decon_source"] > 10 and out[1].scores["decon_source"] <= 4
    assert list((tmp_path / "cache" / "benchmarks").glob("magicbrush_test-*.json"))  # hashed once, cached
    assert stage.decide(out[1].scores) == f"contaminated: source within {int(out[1].scores['decon_source'])} bits of a benchmark image"


def test_decontamination_reads_parquet_benchmarks(tmp_path: Path) -> None:
    import pyarrow as pa

    buffer = io.BytesIO()
    Image.fromarray(photo("chelsea")).save(buffer, format="PNG")
    table = pa.table({"image": [{"bytes": buffer.getvalue(), "path": "x.png"}], "idx": ["emu-17"]})
    pq.write_table(table, tmp_path / "test.parquet")
    params = DecontaminateParams(benchmarks=[{"name": "emu_edit", "kind": "parquet", "path": str(tmp_path / "test.parquet"), "ref_column": "idx"}])
    stage = DecontaminateStage(params, BuildContext("d", "d", 0, cache_dir=tmp_path / "cache"))
    stage.setup()
    out = apply_stage(stage, "decontaminate", [pair(0, recompressed(photo("chelsea"), 0.6)), pair(1, photo("coffee"))], batch_size=8)
    assert out[0].reject.reason.endswith("emu_edit/emu-17") and out[1].alive


def test_the_dedupe_stage_hashes_pairs_and_drops_no_ops_and_earlier_copies(tmp_path: Path) -> None:
    stage = DedupeStage(DedupeParams(min_pair_distance=3), BuildContext("d", "d", 0))
    stage.setup()
    astronaut = photo("astronaut")
    out = apply_stage(stage, "dedupe", [pair(0, astronaut), pair(1, astronaut, astronaut.copy())], batch_size=8)
    assert out[0].alive and out[0].scores["phash_pair"] > 3 and out[0].scores["dup_distance"] is None
    assert out[1].reject.reason == "no-op edit: target within 0 bits of its source"
    assert set(out[0].provenance["phash"]) == {"source", "target"}


RECIPE = """
name: dedupe-test
output: {dir: out, shard_size: 2}
execution: {runner: local}
source: {kind: folder, folder: FOLDER, max_side: 64}
stages:
  - kind: copy
  - kind: dedupe
"""


def test_post_build_dedupe_across_shards_keeps_the_first_copy(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photo("astronaut")).save(folder / "a_astronaut.png")
    Image.fromarray(photo("coffee")).save(folder / "b_coffee.png")
    Image.fromarray(photo("chelsea")).save(folder / "c_chelsea.png")
    Image.fromarray(recompressed(photo("astronaut"), 0.6, 50)).save(folder / "d_astronaut_copy.jpg", quality=50)
    Image.fromarray(photo("rocket")).save(folder / "e_rocket.png")
    out = tmp_path / "out"
    build(load_plan(write_recipe(tmp_path, RECIPE.replace("FOLDER", str(folder))), out=out), runner="local", progress=False)

    def data(where: Path) -> dict[str, dict]:
        return {r["id"]: r for f in sorted((where / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}

    before = data(out)
    assert len(before) == 5 and len(list((out / "data").glob("*.parquet"))) == 3  # the two copies are in different shards
    report = dedupe_build(out, tmp_path / "deduped")
    after = data(tmp_path / "deduped")
    [gone] = set(before) - set(after)
    assert json.loads(before[gone]["provenance"])["source"]["ref"].endswith("d_astronaut_copy.jpg")
    first = next(i for i, r in before.items() if json.loads(r["provenance"])["source"]["ref"].endswith("a_astronaut.png"))
    rejects = [r for f in sorted((tmp_path / "deduped" / "rejects").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert [(r["id"], r["stage"]) for r in rejects] == [(gone, "dedupe")]
    assert rejects[0]["reason"].startswith("duplicate: within ") and rejects[0]["reason"].endswith(f"of row {first} (pHash of source and target)")
    assert rejects[0]["source_image"]["bytes"] == before[gone]["source_image"]["bytes"]
    assert report["dropped"] == 1
    summary = json.loads((tmp_path / "deduped" / "summary.json").read_text())
    assert summary["rows"] == 4 and summary["rejects"] == 1
    again = dedupe_build(out, tmp_path / "deduped")  # the same bytes on a rerun
    assert again["dropped"] == 1

    # a later build checked against this one by path: every pair repeats an earlier one
    later = DedupeStage(DedupeParams(against=[str(tmp_path / "deduped")]), BuildContext("d", "d", 0))
    later.setup()
    copy = photo("coffee")
    [hit] = apply_stage(later, "dedupe", [pair(9, copy, copy.copy())], batch_size=1)
    assert hit.reject.reason.startswith("duplicate: within 0 bits of a pair of an earlier build (")


@pytest.mark.parametrize("distance", [0, 4])
def test_distinct_photos_are_left_alone(distance: int) -> None:
    rows = [(f"{i:012d}", n, PairHash(phash(photo(n)), phash(photo(n)[:, ::-1].copy()))) for i, n in enumerate(NAMES)]
    assert near_duplicates(rows, distance) == {}


COPIES_RECIPE = """
name: dedupe-copies
output: {dir: out, shard_size: 3}
execution: {runner: local}
source: {kind: folder, folder: FOLDER, max_side: 64}
stages:
  - kind: copy
"""


def test_a_build_without_the_stage_dedupes_to_the_bytes_brute_force_gives(tmp_path: Path) -> None:
    """Hashes from the images (no provenance.phash), the band index, and the same rewrite as an all-pairs decision."""
    from crispedit.ops.rewrite import Verdict, rewrite_build

    folder = tmp_path / "photos"
    folder.mkdir()
    for k, (name, scale, quality) in enumerate((n, s, q) for s, q in ((1.0, 90), (0.7, 50), (1.3, 35)) for n in NAMES):
        Image.fromarray(recompressed(photo(name, 96), scale, quality)).save(folder / f"{k:02d}_{name}.jpg", quality=quality)
    out = tmp_path / "out"
    build(load_plan(write_recipe(tmp_path, COPIES_RECIPE.replace("FOLDER", str(folder))), out=out), runner="local", progress=False)
    rows = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]  # build order
    hashes = [tuple(phash(Image.open(io.BytesIO(r[c]["bytes"]))) for c in ("source_image", "target_image")) for r in rows]
    for max_distance in (0, 4, 12):
        kept: list[int] = []
        expected: dict[str, tuple[str, int]] = {}
        for j, h in enumerate(hashes):
            near = [(i, max(hamming(a, b) for a, b in zip(hashes[i], h, strict=True))) for i in kept]
            hit = next(((i, d) for i, d in near if d <= max_distance), None)
            if hit is None:
                kept.append(j)
            else:
                expected[rows[j]["id"]] = (rows[hit[0]]["id"], hit[1])
        assert expected or max_distance == 0
        report = dedupe_build(out, tmp_path / f"new-{max_distance}", max_distance)
        assert report["dropped"] == len(expected)

        def verdict(row: dict, expected: dict = expected) -> Verdict | None:
            if row["reason"] is not None or row["id"] not in expected:
                return None
            copy_of, distance = expected[row["id"]]
            return Verdict("dedupe", f"duplicate: within {distance} bits of row {copy_of} (pHash of source and target)")

        reference = tmp_path / f"reference-{max_distance}"
        note = {"dedupe": {"max_distance": max_distance, "dropped": len(expected)}}
        rewrite_build(out, reference, verdict, note=note, kind="dedupe", plots=False)
        for part in ("data", "rejects"):
            ours = sorted((tmp_path / f"new-{max_distance}" / part).glob("*.parquet"))
            theirs = sorted((reference / part).glob("*.parquet"))
            assert [p.name for p in ours] == [p.name for p in theirs]
            assert [p.read_bytes() for p in ours] == [p.read_bytes() for p in theirs], (max_distance, part)
