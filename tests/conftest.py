"""Shared fixtures: the repository, a local Ray instance, and one quickstart build per session."""

from __future__ import annotations

import os

# Before anything imports torch: on a small shared machine, one thread per process is far
# faster for tiny models (threads fight over the cores); Ray workers and CLI subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers.recipes import QUICKSTART, REPO  # noqa: E402


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session, with its CPUs stated, shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def quickstart_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart recipe built once, in-process: OUT with OUT/data/*.parquet."""
    from crispedit.engine import build
    from crispedit.recipe import load_plan

    out = tmp_path_factory.mktemp("quickstart")
    build(load_plan(QUICKSTART, out=out), runner="local", progress=False)
    return out
