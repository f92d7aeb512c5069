"""``crispedit refilter``: new thresholds on a finished build's kept scores; no model, no image touched."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crispedit.cli import main
from crispedit.engine import build
from crispedit.ops.refilter import RefilterError, refilter
from crispedit.recipe import load_plan
from tests.helpers.recipes import write_recipe

RECIPE = """
name: refilter-test
seed: 0
output: {dir: out, shard_size: 4, image_format: png}
execution: {runner: local}
source: {kind: skimage, photos: [astronaut, coffee, chelsea, rocket], max_side: 32, edits_per_image: 2}
stages:
  - kind: instruct
    backend: template
  - kind: classical
  - kind: pixel_change
    min_l1: 0.02
  - kind: clip_filter
    clip_model: tiny
    min_clip_dir: 0.0
"""


def chain(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("refilter")
    out = folder / "out"
    build(load_plan(write_recipe(folder, RECIPE), out=out), runner="local", progress=False)
    return out


def rows(out: Path, kind: str = "data") -> list[dict]:
    files = sorted((out / kind).glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and ".cache" not in p.parts}


def images(out: Path) -> dict[str, tuple]:
    return {r["id"]: tuple((r[c] or {}).get("bytes") for c in ("source_image", "target_image", "mask")) for r in rows(out) + rows(out, "rejects")}


def test_the_build_has_rows_of_every_kind(built: Path) -> None:
    data, rejects = rows(built), rows(built, "rejects")
    stages = {r["stage"] for r in rejects}
    assert data and "clip_filter" in stages, "the fixture needs clip_filter rejects to bring back"
    assert all(r["clip_dir"] is not None for r in data + rejects if r.get("stage") in (None, "clip_filter", "pixel_change"))


def test_the_same_thresholds_give_the_same_shards_byte_for_byte(built: Path, tmp_path: Path) -> None:
    same = chain(tmp_path, "same", "stages:\n  - kind: clip_filter\n    clip_model: tiny\n    min_clip_dir: 0.0\n")
    report = refilter(built, same, tmp_path / "same-out")
    assert report["restored"] == report["dropped"] == 0
    for kind in ("data", "rejects"):
        for original in sorted((built / kind).glob("*.parquet")):
            assert (tmp_path / "same-out" / kind / original.name).read_bytes() == original.read_bytes(), original.name
    old = json.loads((built / "summary.json").read_text())
    new = json.loads((tmp_path / "same-out" / "summary.json").read_text())
    for name in ("pixel_change", "clip_filter"):
        assert {k: new["stages"][name][k] for k in ("seen", "passed", "rejected")} == {k: old["stages"][name][k] for k in ("seen", "passed", "rejected")}


def test_loosening_brings_filter_rejects_back_with_their_image_bytes(built: Path, tmp_path: Path) -> None:
    loose = chain(tmp_path, "loose", "stages:\n  - kind: clip_filter\n    clip_model: tiny\n")
    report = refilter(built, loose, tmp_path / "loose-out")
    before = {r["id"]: r for r in rows(built, "rejects")}
    back = {r["id"] for r in rows(tmp_path / "loose-out")} - {r["id"] for r in rows(built)}
    assert back == {i for i, r in before.items() if r["stage"] == "clip_filter"} and report["restored"] == len(back) > 0
    left = {r["id"]: r for r in rows(tmp_path / "loose-out", "rejects")}
    assert {i: (r["stage"], r["reason"]) for i, r in left.items()} == {i: (r["stage"], r["reason"]) for i, r in before.items() if r["stage"] != "clip_filter"}
    assert images(tmp_path / "loose-out") == images(built)  # every image's bytes, as they were
    new = rows(tmp_path / "loose-out")
    keys = [json.loads(r["provenance"])["source"]["ref"] for r in new]
    assert keys  # rows are in build order: item by item
    order = [r["id"] for r in sorted(rows(built) + [r for r in rows(built, "rejects") if r["id"] in back], key=lambda r: r["id"])]
    assert sorted(r["id"] for r in new) == sorted(order)
    summary = json.loads((tmp_path / "loose-out" / "summary.json").read_text())
    assert summary["rows"] == len(new) and summary["stages"]["clip_filter"]["rejected"] == {}
    assert summary["stages"]["clip_filter"]["passed"] == summary["stages"]["clip_filter"]["seen"] == len(new)
    assert (tmp_path / "loose-out" / "hist-clip_dir.png").stat().st_size > 1000


def test_tightening_drops_exactly_the_rows_below_the_new_threshold(built: Path, tmp_path: Path) -> None:
    kept = rows(built)
    values = sorted(r["clip_dir"] for r in kept)
    cut = (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    tight = chain(tmp_path, "tight", f"stages:\n  - kind: clip_filter\n    clip_model: tiny\n    min_clip_dir: {cut!r}\n")
    refilter(built, tight, tmp_path / "tight-out")
    assert {r["id"] for r in rows(tmp_path / "tight-out")} == {r["id"] for r in kept if r["clip_dir"] >= cut}
    dropped = [r for r in rows(tmp_path / "tight-out", "rejects") if r["id"] in {k["id"] for k in kept}]
    assert dropped and all(r["stage"] == "clip_filter" and r["reason"].startswith("wrong direction: clip_dir") for r in dropped)
    assert all(r["index"] is not None and r["source_ref"] for r in dropped)  # traced back from the ids
    recipe = (tmp_path / "tight-out" / "recipe.yaml").read_text()
    assert f"min_clip_dir: {cut!r}" in recipe or f"min_clip_dir: {cut}" in recipe


def test_refilter_is_idempotent(built: Path, tmp_path: Path) -> None:
    loose = chain(tmp_path, "loose", "stages:\n  - kind: clip_filter\n    clip_model: tiny\n    min_clip_dir: -0.5\n")
    refilter(built, loose, tmp_path / "a")
    refilter(built, loose, tmp_path / "b")
    first = files(tmp_path / "a")
    assert first == files(tmp_path / "b") and any(k.startswith("data/") for k in first)
    refilter(built, loose, tmp_path / "a")  # again, in place
    assert files(tmp_path / "a") == first
    refilter(tmp_path / "a", loose, tmp_path / "c")  # refiltering the result with the same chain changes no row
    for kind in ("data", "rejects"):
        for name in sorted((tmp_path / "a" / kind).glob("*.parquet")):
            assert (tmp_path / "c" / kind / name.name).read_bytes() == name.read_bytes()


def test_refilter_refuses_what_it_cannot_decide(built: Path, tmp_path: Path) -> None:
    dino = chain(tmp_path, "dino", "stages:\n  - kind: clip_filter\n    clip_model: tiny\n    dino_model: tiny\n    min_dino_i: 0.4\n")
    with pytest.raises(RefilterError, match="dino_i"):
        refilter(built, dino, tmp_path / "x")
    generator = chain(tmp_path, "gen", "stages:\n  - kind: classical\n")
    with pytest.raises(RefilterError, match="not a filter"):
        refilter(built, generator, tmp_path / "x")
    with pytest.raises(RefilterError, match="what this command reads"):
        refilter(built, chain(tmp_path, "same", "stages: []\n"), built)


def test_the_cli(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loose = chain(tmp_path, "loose", "stages:\n  - kind: clip_filter\n    clip_model: tiny\n")
    assert main(["refilter", str(built), "--filters", str(loose), "--to", str(tmp_path / "cli"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["restored"] > 0 and report["rows"] == len(rows(tmp_path / "cli"))
    other = chain(tmp_path, "tight", "stages:\n  - kind: clip_filter\n    clip_model: tiny\n    min_clip_dir: 0.9\n")
    assert main(["refilter", str(built), "--filters", str(other), "--to", str(tmp_path / "cli")]) == 2  # holds another dataset
    assert main(["refilter", str(built), "--filters", str(other), "--to", str(tmp_path / "cli"), "--overwrite"]) == 0


MASK_RULE = "stages:\n  - kind: mask_filter\n    unmasked: {unmasked}\n"
MASKED = """
name: refilter-masked
seed: 0
output: {dir: out, shard_size: 4, image_format: png}
execution: {runner: local}
source: {kind: skimage, photos: [astronaut, coffee], max_side: 128, edits_per_image: 1}
stages:
  - kind: instruct
    backend: template
  - kind: classical
  - kind: ground
    detector_model: IDEA-Research/grounding-dino-base
    segmenter_model: facebook/sam-vit-huge
    keywords: [main object]
"""


def test_a_mask_rule_passes_the_pairs_without_a_mask_and_counts_them(built: Path, tmp_path: Path) -> None:
    """UltraEdit's mask rule (``unmasked: keep``) on a build that made no masks: every pair passes it, said so."""
    with pytest.raises(RefilterError, match="mask_contours, mask_coverage, which the build did not score"):
        refilter(built, chain(tmp_path, "strict", MASK_RULE.format(unmasked="reject")), tmp_path / "x")
    report = refilter(built, chain(tmp_path, "waived", MASK_RULE.format(unmasked="keep")), tmp_path / "waived-out")
    assert report["restored"] == report["dropped"] == 0
    why = "no edit mask (a global edit): the mask rule checks region edits only"
    # the rule runs last, on the rows the build's own filters (thresholds unchanged) keep: its data rows
    assert report["not_applicable"] == {"mask_filter": {why: len(rows(built))}}
    summary = json.loads((tmp_path / "waived-out" / "summary.json").read_text())
    assert summary["derived_from"]["not_applicable"] == report["not_applicable"]
    assert summary["stages"]["mask_filter"]["passed"] == len(rows(built))
    for original in sorted((built / "data").glob("*.parquet")):
        assert (tmp_path / "waived-out" / "data" / original.name).read_bytes() == original.read_bytes()


def test_a_mask_rule_is_refused_on_a_pair_with_a_mask_the_build_did_not_score(tmp_path: Path) -> None:
    out = tmp_path / "masked"
    build(load_plan(write_recipe(tmp_path, MASKED), tiny=True, out=out), runner="local", progress=False)
    masked = [r["id"] for r in rows(out) if r["mask"] is not None]
    assert masked, "the fixture needs pairs with masks"
    with pytest.raises(RefilterError, match=f"row {masked[0]} is a pair its rule applies to"):
        refilter(out, chain(tmp_path, "waived", MASK_RULE.format(unmasked="keep")), tmp_path / "x")
    assert not (tmp_path / "x").exists()
