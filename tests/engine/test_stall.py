"""A starved build stops within execution.stall_timeout_s with a message naming what waits,
and keeps what it committed; the CLI exits 4."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from crispedit.engine import build
from crispedit.engine.stall import BuildStalled
from crispedit.recipe import load_plan
from tests.helpers.recipes import QUICKSTART

STALL_S = 8.0


@pytest.mark.slow
def test_a_build_starved_by_another_job_is_stopped_as_a_stall(ray_local, tmp_path: Path) -> None:
    """Another job's actor holds 1.9 of the session's 2 CPUs: no step of the plan can ever start."""
    ray = ray_local

    @ray.remote(num_cpus=1.9)
    class Hog:
        def ping(self) -> int:
            return 1

    hog = Hog.remote()
    ray.get(hog.ping.remote())
    try:
        plan = load_plan(QUICKSTART, out=tmp_path / "out")
        plan.recipe.execution.stall_timeout_s = STALL_S
        started = time.monotonic()
        with pytest.raises(BuildStalled) as caught:
            build(plan, runner="ray", progress=False)
        waited = time.monotonic() - started
    finally:
        ray.kill(hog)
    message = str(caught.value)
    assert f"nothing advanced for {STALL_S:g}s" in message
    assert "free: " in message and "of 2 CPU" in message
    assert "waiting for resources" in message  # the GCS's pending demand, matched to a step
    assert waited < STALL_S + 60
    assert not list((tmp_path / "out").glob("data/*.parquet"))  # nothing half-made was committed
