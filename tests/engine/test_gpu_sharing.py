"""A recipe with more GPU stages than GPUs on the default Ray runner, Ray given one (fake) GPU.

recipes/crispedit.yaml has four model stages that each declare a whole GPU. On a one-GPU Ray
(``execution.num_gpus: 1``; the tiny models still run on this machine's CPU) the plan gives them
fractional GPUs and the build completes; with ``share_gpus: false`` the same build is refused
before any model loads, naming the stage and the GPUs it lacks. Each build runs in its own
process so that its Ray instance (with the GPU) is not the test session's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers.recipes import RECIPES, REPO, write_recipe

ONE_GPU = "execution:\n  runner: ray\n  num_gpus: 1\n  num_cpus: 2\n"


def _recipe(tmp_path: Path, share: bool) -> Path:
    text = (RECIPES / "crispedit.yaml").read_text(encoding="utf-8")
    assert "execution:\n  runner: ray\n" in text and "  shard_size: 8\n" in text
    text = text.replace("execution:\n  runner: ray\n", ONE_GPU + ("" if share else "  share_gpus: false\n"))
    return write_recipe(tmp_path, text.replace("  shard_size: 8\n", "  shard_size: 2\n"), f"share_{share}.yaml")


def _build(recipe: Path, out: Path) -> subprocess.CompletedProcess[str]:
    args = ["-v", "build", str(recipe), "--tiny", "--out", str(out), "--max-shards", "1", "--no-progress"]
    return subprocess.run([sys.executable, "-m", "crispedit.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=900)


@pytest.mark.slow
def test_more_gpu_stages_than_gpus_share_the_gpu_or_are_refused_before_any_model_loads(tmp_path: Path) -> None:
    refused = _build(_recipe(tmp_path, share=False), tmp_path / "refused")
    assert refused.returncode != 0
    assert "stage 'p2p' needs 1 GPU(s) for 1 actor(s), but only 0 of the cluster's 1 GPUs are left" in refused.stderr
    assert "sdxl_source hold 1" in refused.stderr  # who holds the GPU it lacks
    assert not list((tmp_path / "refused").glob("data/*.parquet"))
    # refused while fitting the plan: before the plan is logged and any Ray step (actor, model) is made
    assert "resource plan for" not in refused.stderr

    shared = _build(_recipe(tmp_path, share=True), tmp_path / "shared")
    assert shared.returncode == 0, shared.stderr[-3000:]
    assert "resource plan for 2 CPUs, 1 GPUs" in shared.stderr and "the model stages share the GPUs" in shared.stderr
    rows = pq.read_table(tmp_path / "shared" / "data").num_rows
    rejects = pq.read_table(tmp_path / "shared" / "rejects").num_rows if (tmp_path / "shared" / "rejects").is_dir() else 0
    assert rows + rejects > 0
