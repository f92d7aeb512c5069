"""Ray and the in-process runner run the same stage classes and give the same bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crispedit.engine import build
from crispedit.recipe import load_plan
from crispedit.sample import Sample
from crispedit.stages.base import apply_stage
from tests.conftest import QUICKSTART


def test_ray_and_local_give_identical_shards(ray_local, quickstart_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    result = build(load_plan(QUICKSTART, out=out), runner="ray", progress=False)
    assert result.shards_built == 3
    for folder in ("data", "rejects"):
        names = sorted(p.name for p in (quickstart_dataset / folder).iterdir())
        assert names == sorted(p.name for p in (out / folder).iterdir())
        for name in names:
            assert (out / folder / name).read_bytes() == (quickstart_dataset / folder / name).read_bytes(), name
    rerun = build(load_plan(QUICKSTART, out=out), runner="ray", progress=False)
    assert rerun.shards_built == 0 and rerun.shards_skipped == 3


def test_one_bad_sample_becomes_a_reject_not_a_crash() -> None:
    def flaky(batch: list[Sample]) -> list[Sample]:
        for s in batch:
            if s.index == 2:
                raise ValueError("cannot handle item 2")
            s.target_image = np.zeros((2, 2, 3), np.uint8)
        return batch

    samples = [Sample(id=str(i), index=i, source_ref=str(i)) for i in range(5)]
    stats = apply_stage(flaky, "flaky", samples, batch_size=4)
    assert [s.alive for s in samples] == [True, True, False, True, True]
    assert samples[2].reject.reason == "ValueError: cannot handle item 2"
    assert stats.passed == 4 and dict(stats.rejected) == {"ValueError": 1}
    assert all(s.target_image is not None for s in samples if s.alive)


def test_a_stage_that_drops_samples_is_caught() -> None:
    def dropper(batch: list[Sample]) -> list[Sample]:
        return batch[:-1]

    samples = [Sample(id=str(i), index=i, source_ref=str(i)) for i in range(3)]
    apply_stage(dropper, "dropper", samples, batch_size=3)
    # alone, each sample is "dropped" too: nothing vanishes silently, each becomes a reject
    assert all(not s.alive and "one for one" in s.reject.reason for s in samples)


def test_model_stage_runs_in_an_actor_pool_with_identical_bytes(ray_local, tmp_path: Path) -> None:
    from crispedit.engine import segments

    recipe = QUICKSTART.parent / "ground.yaml"
    plan = load_plan(recipe, tiny=True, out=tmp_path / "ray")
    names = [[s if isinstance(s, str) else plan.stages[s].name for s in seg] for seg in segments(plan)]
    assert names == [["source", "instruct", "classical"], ["ground"], ["mask_filter", "pixel_change", "write"]]
    build(plan, runner="ray", progress=False)
    build(load_plan(recipe, tiny=True, out=tmp_path / "local"), runner="local", progress=False)
    for folder in ("data", "rejects"):
        names = sorted(p.name for p in (tmp_path / "local" / folder).iterdir())
        assert names and names == sorted(p.name for p in (tmp_path / "ray" / folder).iterdir())
        for name in names:
            assert (tmp_path / "ray" / folder / name).read_bytes() == (tmp_path / "local" / folder / name).read_bytes()
