"""The stage contract: fan-out and selection, transient failures, the breaker, declared
resources and data flow, and filters that keep their scores, through real builds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from crispedit.core.failures import StageBroken
from crispedit.core.located import RecipeError
from crispedit.core.presets import BUNDLED
from crispedit.engine import build
from crispedit.recipe import load_plan
from tests.helpers.recipes import QUICKSTART, REPO, write_recipe

BEST_OF_N = """
name: best-of-n
seed: 7
plugins: [tests.helpers.contract_stages]
output: {dir: out, shard_size: 2}
source: {kind: skimage, photos: [astronaut, chelsea, coffee, rocket, motorcycle], max_side: 48}
stages:
  - kind: candidates
    n: 3
  - kind: pixel_change
    min_l1: 0.05
  - kind: select
    score: pixel_l1
    keep: 1
"""


def ids(out: Path, folder: str) -> list[str]:
    return sorted(pq.read_table(out / folder, columns=["id"]).column("id").to_pylist())


def cli(recipe: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crispedit.cli", "build", str(recipe), "--out", str(out), "--no-progress", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def best_of_n(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("best-of-n")
    recipe = write_recipe(folder, BEST_OF_N)
    out = folder / "uninterrupted"
    build(load_plan(recipe, out=out), runner="local", progress=False)
    return recipe, out


def test_fan_out_and_selection_keep_one_of_n_with_ranks_and_scores(best_of_n) -> None:
    _, out = best_of_n
    rows = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    rejects = pq.read_table(out / "rejects").to_pylist()
    assert len(rows) + len(rejects) == 5 * 3  # every candidate is a row or a reject
    families: dict[str, list[dict]] = {}
    for r in [*rows, *rejects]:
        families.setdefault(r["parent_id"], []).append(r)
    assert len(families) == 5 and all(len(f) == 3 for f in families.values())
    for family in families.values():
        kept = [r for r in family if r.get("reason") is None]
        assert len(kept) <= 1
        scored = [r for r in family if r["pixel_l1"] is not None]
        assert len(scored) == 3  # rejects keep their scores
        if kept:
            assert kept[0]["pixel_l1"] == max(r["pixel_l1"] for r in family)
    not_selected = [r for r in rejects if r["reason"].startswith("not selected")]
    assert not_selected and all(re.fullmatch(r"not selected: rank [23] of [23] by pixel_l1 \(0\.\d{4}\)", r["reason"]) for r in not_selected)
    assert all(r["source_image"] is not None for r in rejects)  # and their images
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["candidates"]["seen"] == 5 and summary["stages"]["candidates"]["passed"] == 15
    assert summary["stages"]["select"]["seen"] + sum(summary["stages"]["pixel_change"]["rejected"].values()) == 15


def test_child_ids_and_seeds_derive_from_the_parent(best_of_n) -> None:
    _, out = best_of_n
    from crispedit.core.sample import child_id

    table = pq.read_table(out / "data").to_pylist() + pq.read_table(out / "rejects").to_pylist()
    for row in table:
        provenance = json.loads(row["provenance"])
        assert any(row["id"] == child_id(row["parent_id"], k) for k in range(3))
        assert provenance["candidates"]["seed"] != 0
    assert len({json.loads(r["provenance"])["candidates"]["seed"] for r in table}) == len(table)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["after-rejects:2", "after-marker:1", "temporary-written:5"])
def test_fan_out_build_killed_and_resumed_gives_the_uninterrupted_ids(best_of_n, tmp_path: Path, fault: str) -> None:
    recipe, baseline = best_of_n
    out, log = tmp_path / "out", tmp_path / "faults.log"
    killed = cli(recipe, out, "--runner", "local", env={"CRISPEDIT_FAULT": fault, "CRISPEDIT_FAULT_LOG": str(log)})
    assert killed.returncode == -signal.SIGKILL and log.read_text().split() == [fault]
    done = cli(recipe, out, "--runner", "local")
    assert done.returncode == 0, done.stderr
    for folder in ("data", "rejects"):
        assert ids(out, folder) == ids(baseline, folder)
        for name in sorted(p.name for p in (baseline / folder).iterdir()):
            assert (out / folder / name).read_bytes() == (baseline / folder / name).read_bytes()


def test_a_server_outage_leaves_shards_uncommitted_and_the_rerun_completes(tmp_path: Path) -> None:
    flag = tmp_path / "server-down"
    flag.touch()
    recipe = write_recipe(tmp_path, BEST_OF_N.replace("  - kind: candidates", f"  - kind: outage\n    flag: {flag}\n  - kind: candidates"))
    out = tmp_path / "out"
    first = cli(recipe, out, "--runner", "local")
    assert first.returncode == 1
    assert "3 shards not committed" in first.stderr and "model server unreachable" in first.stderr
    assert not list((out / "_commits").glob("*.json")) if (out / "_commits").exists() else True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["rejects"] == 0
    flag.unlink()
    second = cli(recipe, out, "--runner", "local")
    assert second.returncode == 0, second.stderr
    assert json.loads((out / "summary.json").read_text())["complete"] is True
    assert len(ids(out, "data")) + len(ids(out, "rejects")) == 15


def test_the_breaker_stops_a_stage_that_raises_on_every_call(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, BEST_OF_N.replace("  - kind: pixel_change", "  - kind: buggy\n  - kind: pixel_change"))
    out = tmp_path / "out"
    with pytest.raises(StageBroken, match="raised KeyError on"):
        build(load_plan(recipe, out=out), runner="local", progress=False)
    assert not (out / "_commits").exists() or not list((out / "_commits").iterdir())
    saved = (out / "logs" / "broken-buggy.txt").read_text()
    assert "Traceback" in saved and "source_imgae" in saved
    result = cli(recipe, tmp_path / "cli-out", "--runner", "local")
    assert result.returncode == 3 and result.stderr.count("Traceback") == 1


def test_a_bad_stage_order_is_a_located_validate_error(tmp_path: Path) -> None:
    text = QUICKSTART.read_text().replace("  - kind: instruct\n    backend: template\n  - kind: classical\n", "  - kind: classical\n  - kind: instruct\n    backend: template\n")
    recipe = write_recipe(tmp_path, text)
    with pytest.raises(RecipeError) as caught:
        load_plan(recipe)
    line = text.splitlines().index("  - kind: classical") + 1
    assert f"{recipe}:{line}: stage 'classical' needs meta.edit" in str(caught.value)
    result = subprocess.run([sys.executable, "-m", "crispedit.cli", "validate", str(recipe)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and f"recipe.yaml:{line}" in result.stderr


def test_filter_chains_can_be_included_between_stages(tmp_path: Path) -> None:
    text = BEST_OF_N.replace("  - kind: pixel_change\n    min_l1: 0.05\n", "  - include: basic\n")
    (tmp_path / "filters").mkdir()
    (tmp_path / "filters" / "basic.yaml").write_text((BUNDLED / "filters" / "basic.yaml").read_text())
    plan = load_plan(write_recipe(tmp_path, text))
    assert [s.name for s in plan.stages] == ["candidates", "pixel_change", "select"]


@pytest.mark.slow
def test_a_gpu_declared_stage_gets_its_gpu_on_ray(tmp_path: Path) -> None:
    """Ray with one (logical) GPU: the stage asked for none in the recipe and still gets it."""
    recipe = write_recipe(tmp_path, BEST_OF_N.replace("  - kind: select", "  - kind: gpu_probe\n  - kind: select")
                          + "execution: {num_gpus: 1, num_cpus: 2}\n")
    out = tmp_path / "out"
    result = cli(recipe, out, "--runner", "ray")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out / "data").to_pylist()
    assert rows and all(json.loads(r["provenance"])["gpu_probe"]["gpu_ids"] == ["0"] for r in rows)
    local = tmp_path / "local"
    assert cli(recipe, local, "--runner", "local").returncode == 0
    for folder in ("data", "rejects"):  # families crossed Ray steps as rows, yet the bytes are the same
        for name in sorted(p.name for p in (local / folder).iterdir()):
            a, b = (out / folder / name).read_bytes(), (local / folder / name).read_bytes()
            assert pq.read_table(out / folder / name).drop(["provenance"]).equals(pq.read_table(local / folder / name).drop(["provenance"]))
            assert len(a) > 0 and len(b) > 0


def test_without_a_gpu_the_summary_says_the_gpu_stage_ran_on_cpu(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, BEST_OF_N.replace("  - kind: select", "  - kind: gpu_probe\n  - kind: select"))
    result = build(load_plan(recipe, out=tmp_path / "out"), runner="local", progress=False)
    assert result.summary["warnings"] == ["stage 'gpu_probe' declares 1 GPU(s) but this machine has none: it runs on the CPU"]


def test_the_retired_declarations_are_refused_with_their_replacement() -> None:
    from crispedit.stages import Stage

    with pytest.raises(TypeError, match=r"requires: define inputs\(\); uses_models: set in_actor_pool = True"):
        class Old(Stage):  # noqa: F841  (the class statement is the test)
            kind = "old"
            uses_models = True
            requires = ("source_image",)

            def __call__(self, batch):
                return batch


def test_the_params_of_a_stage_come_from_its_type_parameter() -> None:
    from crispedit.filters.clip_filter import ClipFilter, ClipFilterParams
    from crispedit.sdxl.stages.p2p import P2PParams, P2PStage
    from crispedit.sources.parquet import ParquetParams, ParquetSource

    assert ClipFilter.Params is ClipFilterParams and P2PStage.Params is P2PParams and ParquetSource.Params is ParquetParams
