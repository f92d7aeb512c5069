"""Ray and the in-process runner run the same stage classes and give the same bytes;
a failing sample is isolated, and a stage that breaks its contract is caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crispedit.core.failures import StageBroken
from crispedit.core.sample import Sample
from crispedit.core.stats import stage_stats
from crispedit.engine import build
from crispedit.engine.run import apply_stage
from crispedit.recipe import load_plan
from tests.helpers.recipes import QUICKSTART


def assert_same_files(a: Path, b: Path) -> None:
    for folder in ("data", "rejects"):
        names = sorted(p.name for p in (a / folder).iterdir())
        assert names and names == sorted(p.name for p in (b / folder).iterdir())
        for name in names:
            assert (a / folder / name).read_bytes() == (b / folder / name).read_bytes(), name


@pytest.mark.slow
def test_ray_and_local_give_identical_shards(ray_local, quickstart_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    result = build(load_plan(QUICKSTART, out=out), runner="ray", progress=False)
    assert result.shards_built == 3
    assert_same_files(out, quickstart_dataset)
    rerun = build(load_plan(QUICKSTART, out=out), runner="ray", progress=False)
    assert rerun.shards_built == 0 and rerun.shards_skipped == 3


def test_one_bad_sample_becomes_a_reject_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    def flaky(batch: list[Sample]) -> list[Sample]:
        for s in batch:
            if s.index == 2:
                raise ValueError("cannot handle item 2")
            s.target_image = np.zeros((2, 2, 3), np.uint8)
        return batch

    samples = [Sample(id=str(i), index=i, source_ref=str(i)) for i in range(5)]
    out = apply_stage(flaky, "flaky", samples, batch_size=4)
    assert [s.alive for s in out] == [True, True, False, True, True]
    assert out[2].reject.reason == "ValueError: cannot handle item 2"
    stats = stage_stats(out)["flaky"]
    assert stats.seen == 5 and stats.passed == 4 and dict(stats.rejected) == {"ValueError": 1}
    assert all(s.target_image is not None for s in out if s.alive)
    assert out[2].target_image is None  # the failed batch left nothing half-made on the retried sample
    assert "a batch of 4 failed (ValueError: cannot handle item 2)" in caplog.text


def test_a_stage_that_drops_one_sample_rejects_it_and_one_that_drops_all_trips_the_breaker() -> None:
    def drops_item_1(batch: list[Sample]) -> list[Sample]:
        return [s for s in batch if s.index != 1]

    samples = [Sample(id=str(i), index=i, source_ref=str(i)) for i in range(4)]
    out = apply_stage(drops_item_1, "dropper", samples, batch_size=4)
    assert [s.alive for s in out] == [True, False, True, True]
    assert "returned nothing for sample 1" in out[1].reject.reason

    def drops_all(batch: list[Sample]) -> list[Sample]:
        return []

    with pytest.raises(StageBroken, match="raised RuntimeError on 4 of 4 samples"):
        apply_stage(drops_all, "dropper", samples, batch_size=4)


@pytest.mark.slow
def test_model_stage_runs_in_an_actor_pool_with_identical_bytes(ray_local, tmp_path: Path) -> None:
    from crispedit.engine import segments

    recipe = QUICKSTART.parent / "ground.yaml"
    plan = load_plan(recipe, tiny=True, out=tmp_path / "ray")
    names = [[s if isinstance(s, str) else plan.stages[s].name for s in seg] for seg in segments(plan)]
    assert names == [["source", "instruct", "classical"], ["ground"], ["mask_filter"], ["clip_filter"], ["pixel_change", "write"]]
    build(plan, runner="ray", progress=False)
    build(load_plan(recipe, tiny=True, out=tmp_path / "local"), runner="local", progress=False)
    assert_same_files(tmp_path / "ray", tmp_path / "local")
    assert not list((tmp_path / "ray").rglob("_parts/*"))  # parts are merged into shards, then removed


def test_a_filter_skips_filter_rejects_that_lack_what_it_reads() -> None:
    """A filter placed before the generator rejects samples with no target yet; a later filter
    scores the rejects that have its inputs and leaves the others alone instead of crashing."""
    from crispedit.core.stage import BuildContext
    from crispedit.filters.pixel_change import PixelChangeFilter, PixelChangeParams

    image = np.zeros((4, 4, 3), np.uint8)
    early = Sample(id="a", index=0, source_ref="a", source_image=image)
    early.fail("mask_filter", "mask too small: coverage 0", filtered=True)
    late = Sample(id="b", index=1, source_ref="b", source_image=image, target_image=image + 1)
    late.fail("clip_filter", "low clip_dir: 0.1", filtered=True)
    stage = PixelChangeFilter(PixelChangeParams(), BuildContext("t", "t", 0))
    out = apply_stage(stage, "pixel_change", [early, late], batch_size=8)
    assert "pixel_l1" not in out[0].scores and out[1].scores["pixel_l1"] == pytest.approx(1 / 255)
    assert out[1].reject.stage == "clip_filter"  # scored, not re-decided


@pytest.mark.slow
def test_relative_source_paths_mean_the_drivers_directory_on_ray_workers(ray_local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray (started by the fixture from the repository root) keeps its workers' directory; the recipe's relative
    folder is the one under the directory crispedit runs from, on every worker as on the driver."""
    from PIL import Image

    from tests.helpers.recipes import write_recipe

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * (i + 1), np.uint8)).save(photos / f"p{i}.png")
    text = QUICKSTART.read_text(encoding="utf-8").replace("kind: skimage", "kind: folder\n  folder: photos")
    recipe = write_recipe(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    result = build(load_plan(recipe, out=tmp_path / "ray"), runner="ray", progress=False)
    build(load_plan(recipe, out=tmp_path / "local"), runner="local", progress=False)
    assert result.shards_built == 1
    assert_same_files(tmp_path / "ray", tmp_path / "local")
