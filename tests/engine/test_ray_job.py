"""`ray job submit` against a running cluster: a local head started here, the quickstart submitted to it.

The head is started with ``ray start --head --block`` in its own process group and its own
temporary directory, so it cannot meet the session's in-process Ray (or anyone else's Ray on
this machine), and it is stopped by signalling exactly that process group: ``ray stop`` would
stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.recipes import REPO
from tests.helpers.s3_server import free_port


def _ray_cli() -> str:
    found = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    if not Path(found).exists():
        pytest.skip("the ray command is not installed")
    return found


def _wait_for_dashboard(url: str, head: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if head.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"ray start exited with {head.returncode} (the job server needs ray[default]):\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (401 when token authentication is on): the job server is up
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the Ray dashboard at {url} did not answer within {seconds:.0f}s:\n{log.read_text(errors='replace')[-2000:]}")


@pytest.fixture
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A one-node Ray cluster with a job server; yields (dashboard URL, environment for the ray CLI)."""
    ray = _ray_cli()
    temp_dir = tempfile.mkdtemp(prefix="crispedit-ray-")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # Ray 2.60 turns token authentication on when ~/.ray/auth_token exists; give this cluster
    # its own throwaway token so the test neither depends on nor reads that file.
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex + uuid.uuid4().hex)
    dashboard_port = free_port()
    command = [
        ray, "start", "--head", "--block", "--disable-usage-stats",
        "--port", str(free_port()), "--num-cpus", "2", "--num-gpus", "0",
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
        "--dashboard-agent-listen-port", str(free_port()),
        "--temp-dir", temp_dir,
    ]
    log_path = Path(temp_dir) / "head.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed in finally)
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_dashboard(url, head, log_path, 120)
        yield url, env
    finally:
        _stop_group(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(head: subprocess.Popen[bytes]) -> None:
    """SIGTERM the head's process group (its daemons and workers), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(head.pid, 0)
            except ProcessLookupError:
                head.poll()
                return
            head.poll()
            time.sleep(0.5)


def _plain(text: str) -> str:
    """CLI output without its colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.mark.slow
def test_quickstart_by_ray_job_submit(ray_head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, env = ray_head
    out = tmp_path / "quickstart"
    submission = f"crispedit-test-{os.getpid()}"
    submit = subprocess.run(
        [
            _ray_cli(), "job", "submit", "--address", url, "--submission-id", submission, "--working-dir", str(REPO),
            "--", "python", "-m", "crispedit.cli", "build", "recipes/quickstart.yaml", "--out", str(out), "--no-progress",
        ],
        env=env, capture_output=True, text=True, timeout=540, cwd=REPO,
    )
    status = subprocess.run(
        [_ray_cli(), "job", "status", "--address", url, submission], env=env, capture_output=True, text=True, timeout=60
    )
    logs = subprocess.run(
        [_ray_cli(), "job", "logs", "--address", url, submission], env=env, capture_output=True, text=True, timeout=60
    )
    assert f"Job '{submission}' succeeded" in _plain(status.stdout + status.stderr), (
        f"job status:\n{status.stdout}{status.stderr}\nsubmit said:\n{submit.stdout[-3000:]}{submit.stderr[-3000:]}\n"
        f"job logs:\n{logs.stdout[-4000:]}"
    )
    assert "output:" in logs.stdout, "the build's own report comes back through the job logs"

    import datasets

    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["rows"] > 0
    dataset = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(dataset) == summary["rows"]
    assert len(set(dataset["id"])) == len(dataset)
    first = dataset[0]
    assert first["source_image"].size == first["target_image"].size and first["instruction"]
