"""Killed with SIGKILL at any moment and rerun, a build ends with exactly the uninterrupted ids."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crispedit.engine import BuildError, build
from crispedit.recipe import load_plan
from tests.conftest import QUICKSTART, write_recipe

# 24 items in 12 shards of 2: many commit points to land a kill between.
RECIPE = QUICKSTART.read_text().replace("shard_size: 8", "shard_size: 2")


def ids_of(out: Path) -> tuple[list[str], list[str]]:
    rows = pq.read_table(out / "data", columns=["id"]).column("id").to_pylist() if (out / "data").is_dir() else []
    rejects = pq.read_table(out / "rejects", columns=["id"]).column("id").to_pylist() if (out / "rejects").is_dir() else []
    return sorted(rows), sorted(rejects)


def strays(out: Path) -> list[Path]:
    return [p for p in out.rglob(".tmp-*")]


def start(recipe: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crispedit.cli", "build", str(recipe), "--runner", "local", "--out", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    """SIGKILL the build the moment ``condition`` holds; False if the build finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    proc.kill()
    raise AssertionError("build neither finished nor reached the kill point")


def count(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[list[str], list[str]]]:
    folder = tmp_path_factory.mktemp("resume")
    recipe = write_recipe(folder, RECIPE, "quickstart.yaml")
    (folder / "filters").mkdir()
    (folder / "filters" / "basic.yaml").write_text((QUICKSTART.parent.parent / "filters" / "basic.yaml").read_text())
    out = folder / "uninterrupted"
    build(load_plan(recipe, out=out), runner="local", progress=False)
    return recipe, ids_of(out)


KILL_POINTS: dict[str, Callable[[Path], bool]] = {
    "at start": lambda out: True,
    "manifest written": lambda out: (out / "manifest.json").exists(),
    "first temporary file": lambda out: bool(strays(out)),
    "first data file before its marker": lambda out: count(out / "data", "*.parquet") > count(out / "_commits", "commit-*.json"),
    "after three commits": lambda out: count(out / "_commits", "commit-*.json") >= 3,
    "after seven commits": lambda out: count(out / "_commits", "commit-*.json") >= 7,
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_rerun_gives_the_uninterrupted_ids(baseline, tmp_path: Path, point: str) -> None:
    recipe, expected = baseline
    out = tmp_path / "out"
    killed = kill_when(start(recipe, out), lambda: KILL_POINTS[point](out))
    # a second kill during the rerun, then a clean rerun
    if killed:
        kill_when(start(recipe, out), lambda: count(out / "_commits", "commit-*.json") >= 9)
    rerun = start(recipe, out)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read().decode()
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
