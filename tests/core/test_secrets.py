"""Credentials in URLs never leave: not in any byte a build, its preview or a publish dry run writes, nor in the logs at -v.

docs/recipes.md ("Trust") promises one scrubber (crispedit.core.redact) for every URL and every text
crispedit writes: the userinfo of a URL and its query parameters that carry keys or tokens
become ``***``. The end-to-end tests run real builds against the local OpenAI-protocol
server with an endpoint that carries a password and a token, and search every file written
(Parquet decoded as well as raw) and everything printed.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crispedit.core.presets import BUNDLED
from crispedit.core.redact import REDACTED, scrub_data, scrub_text, scrub_url
from tests.helpers.llm_server import LLMServer
from tests.helpers.recipes import REPO, write_recipe

PASSWORD, TOKEN, SIGNATURE = "hunter2pass", "sk-querytoken", "sigvalue123"
SECRETS = (PASSWORD, TOKEN, SIGNATURE)


@pytest.mark.parametrize("url, expected", [
    ("http://user:pw@host:8000/v1", "http://***@host:8000/v1"),
    ("https://token@host/v1/", "https://***@host/v1/"),
    ("http://host/v1?api_key=abc&model=m", "http://host/v1?api_key=***&model=m"),
    ("https://h/x.jpg?X-Amz-Signature=abc&X-Amz-Credential=AKIA%2F1&w=3", "https://h/x.jpg?X-Amz-Signature=***&X-Amz-Credential=***&w=3"),
    ("https://acct.blob.core.windows.net/c/x.png?sv=2020&sig=abc%3D", "https://acct.blob.core.windows.net/c/x.png?sv=2020&sig=***"),
    ("https://h/cb#access_token=abc&state=1", "https://h/cb#access_token=***&state=1"),
    ("s3://key:secret@bucket/prefix", "s3://***@bucket/prefix"),
    ("http://u:p@h/a?token=t#x", "http://***@h/a?token=***#x"),
    ("http://localhost:8000/v1", "http://localhost:8000/v1"),
    ("/a/local/path", "/a/local/path"),
])
def test_scrub_url(url: str, expected: str) -> None:
    assert scrub_url(url) == expected
    assert scrub_url(expected) == expected  # idempotent


def test_scrub_text_finds_urls_and_secret_pairs_anywhere() -> None:
    text = (
        "base_url: http://alice:hunter2@llm:8000/v1\n"
        "api_key_env: OPENAI_API_KEY\nmax_tokens: 512\ncaption_key: caption\n"
        'storage_options: {key: AKIAEXAMPLE, secret: s3cr3t}\n{"token": "t0k3n", "aws_secret_access_key": "abc"}\n'
        "error at https://h/x?sig=zzz, retrying"
    )
    clean = scrub_text(text)
    for secret in ("hunter2", "AKIAEXAMPLE", "s3cr3t", "t0k3n", '"abc"', "sig=zzz"):
        assert secret not in clean, secret
    for kept in ("api_key_env: OPENAI_API_KEY", "max_tokens: 512", "caption_key: caption", "http://***@llm:8000/v1", "retrying"):
        assert kept in clean, kept
    assert scrub_data({"llm": {"base_url": "http://a:b@h/v1", "api_key": "sk-1", "max_tokens": 3}}) == {
        "llm": {"base_url": "http://***@h/v1", "api_key": REDACTED, "max_tokens": 3}}


def test_logs_are_scrubbed_whoever_logs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from crispedit.core.redact import ScrubFilter

    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, "HTTP Request: POST %s", (f"http://u:{PASSWORD}@h/v1?api_key={TOKEN}",), None)
    assert ScrubFilter().filter(record) and PASSWORD not in record.getMessage() and TOKEN not in record.getMessage()


# --- end to end ---------------------------------------------------------------------------------------

RECIPE = """name: secrets
description: "Photos from https://cdn.example/set.tar?X-Amz-Signature={signature} (a signed link)."
seed: 0
output: {{dir: out, shard_size: 2}}
execution: {{runner: {runner}}}
source: {{kind: skimage, photos: [astronaut, coffee, chelsea], max_side: 64}}
stages:
  - {{kind: instruct, backend: template}}
  - {{kind: classical}}
  - kind: judge
    llm:
      base_url: "{url}"
      model: local-judge
      api_key_env: null
      max_retries: 1
      backoff_initial: 0.01
      backoff_max: 0.02
"""


def every_text(root: Path) -> dict[str, bytes]:
    """Each file's raw bytes, and for Parquet its decoded values too (pages are compressed)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".parquet":
                data += json.dumps(pq.read_table(io.BytesIO(data)).drop_columns(
                    [c for c in ("source_image", "target_image", "mask") if c in pq.read_schema(io.BytesIO(data)).names]
                ).to_pylist(), default=str).encode()
            found[path.relative_to(root).as_posix()] = data
    return found


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    return subprocess.run([sys.executable, "-m", "crispedit.cli", "-v", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["local", "ray"])
def test_no_byte_written_or_logged_holds_a_credential(runner: str, tmp_path: Path) -> None:
    with LLMServer() as server:
        url = server.url.replace("http://", f"http://alice:{PASSWORD}@") + f"?api_key={TOKEN}"
        recipe = write_recipe(tmp_path, RECIPE.format(url=url, signature=SIGNATURE, runner=runner))
        (tmp_path / "filters").mkdir()
        for name in ("judge_semantics.txt", "judge_quality.txt"):
            (tmp_path / "filters" / name).write_text((BUNDLED / "filters" / name).read_text())
        out, tree = tmp_path / "out", tmp_path / "tree"
        runs = [_cli("validate", str(recipe)),
                _cli("build", str(recipe), "--out", str(out), "--no-progress", "--num-cpus", "2"),
                _cli("preview", str(out), "--pairs", "4"),
                _cli("publish", str(out), "--dry-run", str(tree), "--examples", "4")]
        for run in runs:
            assert run.returncode == 0, run.stderr
        assert server.count > 0 and all(q == f"api_key={TOKEN}" for q in server.queries)  # the token did reach the server
    printed = "".join(run.stdout + run.stderr for run in runs)
    assert "HTTP Request" in printed or runner == "ray"  # -v shows the client's requests (scrubbed)
    written = {**{f"out/{k}": v for k, v in every_text(out).items()}, **{f"tree/{k}": v for k, v in every_text(tree).items()}}
    assert any(k.startswith("out/preview/") for k in written) and "tree/README.md" in written and "out/.cache/llm" in "".join(written)
    for secret in SECRETS:
        assert secret not in printed, secret
        leaked = [name for name, data in written.items() if secret.encode() in data]
        assert leaked == [], (secret, leaked)
    provenance = json.loads(pq.read_table(out / "data").column("provenance")[0].as_py())
    judge = provenance["models"]["judge"]["judge"]
    assert judge.startswith("local-judge @ http://***@127.0.0.1:") and judge.endswith("/v1?api_key=***")
