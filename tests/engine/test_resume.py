"""Killed with SIGKILL at any moment and rerun, a build ends with exactly the uninterrupted ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crispedit.core.presets import BUNDLED
from crispedit.engine import BuildError, build
from crispedit.recipe import load_plan
from tests.helpers.recipes import QUICKSTART, write_recipe

# 24 items in 12 shards of 2: many commit points to land a kill between.
RECIPE = QUICKSTART.read_text().replace("shard_size: 8", "shard_size: 2")


def ids_of(out: Path) -> tuple[list[str], list[str]]:
    rows = pq.read_table(out / "data", columns=["id"]).column("id").to_pylist() if (out / "data").is_dir() else []
    rejects = pq.read_table(out / "rejects", columns=["id"]).column("id").to_pylist() if (out / "rejects").is_dir() else []
    return sorted(rows), sorted(rejects)


def strays(out: Path) -> list[Path]:
    return [p for p in out.rglob(".tmp-*")] + [p for p in out.rglob("_parts/*/*")]


def run(recipe: Path, out: Path, fault: str | None = None, log: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("CRISPEDIT_FAULT", None)
    if fault:
        env.update(CRISPEDIT_FAULT=fault, CRISPEDIT_FAULT_LOG=str(log))
    return subprocess.run(
        [sys.executable, "-m", "crispedit.cli", "build", str(recipe), "--runner", "local", "--out", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=180,
    )


def killed_at(recipe: Path, out: Path, fault: str, log: Path) -> None:
    """Run the build with a kill injected at a named point and assert the kill happened there."""
    before = log.read_text().splitlines() if log.exists() else []
    result = run(recipe, out, fault, log)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert log.read_text().splitlines() == [*before, fault]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[list[str], list[str]]]:
    folder = tmp_path_factory.mktemp("resume")
    recipe = write_recipe(folder, RECIPE, "quickstart.yaml")
    (folder / "filters").mkdir()
    (folder / "filters" / "basic.yaml").write_text((BUNDLED / "filters" / "basic.yaml").read_text())
    out = folder / "uninterrupted"
    build(load_plan(recipe, out=out), runner="local", progress=False)
    return recipe, ids_of(out)


# Named points in the commit protocol, and which hit of each to die at (12 shards in all).
KILL_POINTS = [
    "after-manifest:1",
    "temporary-written:1",
    "before-rejects:2",
    "after-rejects:3",
    "after-data:4",
    "temporary-written:14",
    "after-marker:7",
]


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_rerun_gives_the_uninterrupted_ids(baseline, tmp_path: Path, point: str) -> None:
    recipe, expected = baseline
    out, log = tmp_path / "out", tmp_path / "faults.log"
    killed_at(recipe, out, point, log)
    # a second kill during the rerun, then a clean rerun
    killed_at(recipe, out, "after-data:2", log)
    rerun = run(recipe, out)
    assert rerun.returncode == 0, rerun.stderr.decode()
    rows, rejects = ids_of(out)
    assert (rows, rejects) == expected
    assert len(rows) == len(set(rows))
    assert not strays(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["rows"] == len(expected[0]) and summary["rejects"] == len(expected[1])


def test_a_marker_whose_data_is_gone_does_not_count(baseline, tmp_path: Path) -> None:
    recipe, expected = baseline
    out = tmp_path / "out"
    build(load_plan(recipe, out=out), runner="local", progress=False)
    victim = sorted((out / "data").glob("*.parquet"))[4]
    victim.write_bytes(victim.read_bytes()[:100])  # torn by a crash or a bad copy
    (out / "data" / ".tmp-leftover.parquet.1.abc").write_bytes(b"junk")
    result = build(load_plan(recipe, out=out), runner="local", progress=False)
    assert result.shards_built == 1
    assert ids_of(out) == expected and not strays(out)


def test_rerun_with_a_different_recipe_is_refused(baseline, tmp_path: Path) -> None:
    recipe, _ = baseline
    out = tmp_path / "out"
    build(load_plan(recipe, out=out), runner="local", progress=False, max_shards=2)
    other = write_recipe(recipe.parent, RECIPE.replace("seed: 0", "seed: 1"), "other.yaml")
    with pytest.raises(BuildError, match="holds a different build"):
        build(load_plan(other, out=out), runner="local", progress=False)
    done = build(load_plan(other, out=out), runner="local", progress=False, overwrite=True)
    assert done.shards_built == 12 and done.summary["fingerprint"] == load_plan(other).fingerprint
