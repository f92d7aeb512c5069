"""Builds whose output is s3:// (moto's server, through s3fs): the same commit guarantees without renames.

Killed with SIGKILL at several moments of the commit protocol and rerun, a build to S3 ends
with exactly the ids of an uninterrupted build, with no stray objects, and ``datasets`` and
``crispedit inspect`` read the result from the S3 URL. The endpoint reaches the CLI
subprocesses (and their Ray workers) through FSSPEC_S3_ENDPOINT_URL, as it would on a cluster.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crispedit.core.presets import BUNDLED
from crispedit.core.storage import Output
from crispedit.engine import build
from crispedit.recipe import load_plan
from tests.helpers.recipes import QUICKSTART, write_recipe
from tests.helpers.s3_server import S3, s3  # noqa: F401  (the fixture)

# 24 items in 12 shards of 2: many commit points to land a kill between.
RECIPE = QUICKSTART.read_text().replace("shard_size: 8", "shard_size: 2")


def ids_of(out: Output) -> tuple[list[str], list[str]]:
    def column(folder: str) -> list[str]:
        tables = [pq.read_table(io.BytesIO(out.read_bytes(key)), columns=["id"]) for key in out.list(folder, "*.parquet")]
        return pa.concat_tables(tables).column("id").to_pylist() if tables else []

    return sorted(column("data")), sorted(column("rejects"))


def strays(out: Output, s3: S3) -> list[str]:  # noqa: F811
    """Objects no committed build should leave: temporaries of any kind and unmerged parts."""
    keys = [k.removeprefix(out.root + "/") for k in s3.fs().find(out.root)]
    return [k for k in keys if "/.tmp-" in f"/{k}" or k.startswith("_parts/")]


def run(s3: S3, recipe: Path, url: str, fault: str | None = None, log: Path | None = None, runner: str = "local") -> subprocess.CompletedProcess:  # noqa: F811
    env = s3.env
    env.pop("CRISPEDIT_FAULT", None)
    if fault:
        env.update(CRISPEDIT_FAULT=fault, CRISPEDIT_FAULT_LOG=str(log))
    return subprocess.run(
        [sys.executable, "-m", "crispedit.cli", "build", str(recipe), "--runner", runner, "--out", url, "--no-progress"],
        capture_output=True, env=env, timeout=300,
    )


def killed_at(s3: S3, recipe: Path, url: str, fault: str, log: Path) -> None:  # noqa: F811
    before = log.read_text().splitlines() if log.exists() else []
    result = run(s3, recipe, url, fault, log)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert log.read_text().splitlines() == [*before, fault]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[list[str], list[str]]]:
    """The uninterrupted build, on a local disk: ids do not depend on where the output lives."""
    folder = tmp_path_factory.mktemp("s3-resume")
    recipe = write_recipe(folder, RECIPE, "quickstart.yaml")
    (folder / "filters").mkdir()
    (folder / "filters" / "basic.yaml").write_text((BUNDLED / "filters" / "basic.yaml").read_text())
    out = folder / "uninterrupted"
    build(load_plan(recipe, out=out), runner="local", progress=False)
    return recipe, ids_of(Output(out))


# Points of the commit protocol an object-store write passes through (no temporaries there).
KILL_POINTS = ["after-manifest:1", "before-rejects:2", "after-rejects:3", "after-data:4", "after-marker:7"]


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_s3_sigkill_then_rerun_gives_the_uninterrupted_ids(baseline, s3: S3, tmp_path: Path, point: str) -> None:  # noqa: F811
    recipe, expected = baseline
    url, log = s3.new_prefix(), tmp_path / "faults.log"
    killed_at(s3, recipe, url, point, log)
    killed_at(s3, recipe, url, "after-data:2", log)  # a second kill, during the rerun
    rerun = run(s3, recipe, url)
    assert rerun.returncode == 0, rerun.stderr.decode()
    out = Output(url, s3.storage_options)
    rows, rejects = ids_of(out)
    assert (rows, rejects) == expected and len(rows) == len(set(rows))
    assert not strays(out, s3)
    summary = json.loads(out.read_bytes("summary.json"))
    assert summary["complete"] and summary["rows"] == len(expected[0]) and summary["rejects"] == len(expected[1])


@pytest.mark.slow
def test_s3_build_on_ray_loads_with_datasets_and_inspect(baseline, s3: S3) -> None:  # noqa: F811
    import datasets

    recipe, expected = baseline
    url = s3.new_prefix()
    result = run(s3, recipe, url, runner="ray")
    assert result.returncode == 0, result.stderr.decode()
    loaded = datasets.load_dataset("parquet", data_files=f"{url}/data/*.parquet", split="train", storage_options=s3.storage_options)
    assert sorted(loaded["id"]) == expected[0]
    assert loaded[0]["source_image"].size == loaded[0]["target_image"].size
    inspect = subprocess.run(
        [sys.executable, "-m", "crispedit.cli", "inspect", url, "--json"], capture_output=True, text=True, env=s3.env, timeout=120
    )
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["rows"] == len(expected[0])


@pytest.mark.slow
def test_s3_torn_objects_of_a_committed_shard_are_rebuilt(baseline, s3: S3) -> None:  # noqa: F811
    """A marker counts only if the objects it names have the sizes it records; stray objects are overwritten."""
    recipe, expected = baseline
    url = s3.new_prefix()
    assert run(s3, recipe, url).returncode == 0
    out = Output(url, s3.storage_options)
    victim = out.list("data", "*.parquet")[4]
    out.write_bytes(victim, out.read_bytes(victim)[:100])  # torn by a bad copy
    rerun = run(s3, recipe, url)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert b"1 shards built" in rerun.stdout, rerun.stdout.decode()[-500:]
    assert ids_of(out) == expected and not strays(out, s3)


# The read-back ends with os._exit: pyarrow reading Parquet through an fsspec filesystem can abort at interpreter
# exit ("terminate called without an active exception", apache/arrow#34314, #39162), after all output is written.
# Seen once in ~100 runs here, under load; the command's own result is what this test checks.
READ_BACK = """
import json, os, sys
from crispedit.core.reader import read_columns
from crispedit.ops.build_info import read_build
build = read_build(sys.argv[1])
ids = sorted(read_columns(build.data_files(), ["id"]).column("id").to_pylist())
print(json.dumps({"shards": len(build.shards), "total": build.shards_total, "complete": build.complete,
                  "stages": [s.name for s in build.stages], "thresholds": build.thresholds, "ids": ids}), flush=True)
os._exit(0)
"""


@pytest.mark.slow
def test_an_object_store_build_is_read_by_the_one_reader(baseline, s3: S3) -> None:  # noqa: F811
    """read_build (what the card, the preview and the histograms read) opens an s3:// build as refilter does."""
    recipe, expected = baseline
    url = s3.new_prefix()
    assert run(s3, recipe, url).returncode == 0
    done = subprocess.run([sys.executable, "-c", READ_BACK, url], capture_output=True, text=True, env=s3.env, timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["complete"] and info["shards"] == info["total"] > 1
    assert info["stages"] == ["instruct", "classical", "pixel_change"] and info["thresholds"]["pixel_l1"] == [0.01, 0.9]
    assert info["ids"] == expected[0]
