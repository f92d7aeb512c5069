"""edit_model's openai backend through the real ``openai`` client over HTTP against tests/helpers/image_edit_server.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from crispedit.core.failures import TransientError
from crispedit.core.stage import BuildContext
from crispedit.editors import openai_backend
from crispedit.editors.edit_model import EditModelParams, EditModelStage
from crispedit.editors.openai_backend import EditRequest
from crispedit.engine.run import apply_stage
from tests.helpers.image_edit_server import ImageEditServer
from tests.helpers.stage_cases import pairs

KEY = "sk-test-SECRETVALUE-0123456789"


@pytest.fixture(scope="module")
def server() -> Iterator[ImageEditServer]:
    with ImageEditServer() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(server: ImageEditServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.reset()
    monkeypatch.setenv("EDIT_KEY", KEY)


def stage(server: ImageEditServer, cache: Path, **openai: object) -> EditModelStage:
    block = {"base_url": server.url, "model": "gpt-image-1.5", "api_key_env": "EDIT_KEY", "timeout": 1.0, "max_retries": 2,
             "backoff_initial": 0.01, "backoff_max": 0.05, "price_per_image": 0.02, **openai}
    params = EditModelParams.model_validate({"backend": "openai", "candidates": 2, "openai": block})
    made = EditModelStage(params, BuildContext("t", "t", 0, cache_dir=cache))
    made.setup()
    return made


def every_byte(samples: list, cache: Path) -> bytes:
    text = repr([(s.reject, s.provenance, s.usage) for s in samples]).encode()
    return text + b"".join(p.read_bytes() for p in cache.rglob("*") if p.is_file())


@pytest.mark.parametrize("route", ["inline", "threads"])
def test_candidates_come_back_seeded_and_a_cached_rerun_sends_nothing(
    route: str, server: ImageEditServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if route == "threads":  # what a large image takes: hashing, encoding, decoding and the cache off the event loop
        monkeypatch.setattr(openai_backend, "INLINE_VALUES", 0)
    out = apply_stage(stage(server, tmp_path, send_seed=True), "edit_model", pairs(2), batch_size=8)
    live = [s for s in out if s.alive]
    assert len(live) == 4 and server.count == 4
    request = server.requests[0]
    assert request.fields["model"] == "gpt-image-1.5" and request.images[0][:8] == b"\x89PNG\r\n\x1a\n"  # multipart upload of a PNG
    assert len({s.provenance["edit_model"]["seed"] for s in live}) == 4
    assert all(s.target_image.shape == s.source_image.shape and s.usage["edit_model"]["cost_usd"] == 0.02 for s in live)
    assert not np.array_equal(live[0].target_image, live[1].target_image)  # a candidate per seed, not one answer twice
    assert {r.fields["seed"] for r in server.requests} == {str(s.provenance["edit_model"]["seed"]) for s in live}
    again = apply_stage(stage(server, tmp_path, send_seed=True), "edit_model", pairs(2), batch_size=8)
    assert server.count == 4  # zero requests on the rerun
    assert [s.target_image.tobytes() for s in again if s.alive] == [s.target_image.tobytes() for s in live]
    assert KEY.encode() not in every_byte(out + again, tmp_path)


def test_rate_limits_server_errors_and_timeouts_are_retried(server: ImageEditServer, tmp_path: Path) -> None:
    server.fail("rate_limit", times=1, retry_after=0.05)
    server.fail("server_error", times=1)
    server.fail("slow", times=1, delay=1.5)
    out = apply_stage(stage(server, tmp_path), "edit_model", pairs(1), batch_size=8)
    assert all(s.alive for s in out) and len(out) == 2
    assert sum(s.usage["edit_model"]["retries"] for s in out) == 3


def test_refusals_and_malformed_answers_are_rejects_with_the_reason(server: ImageEditServer, tmp_path: Path) -> None:
    server.fail("moderation", times=1)
    server.fail("bad_base64", times=1)
    out = apply_stage(stage(server, tmp_path), "edit_model", pairs(1), batch_size=8)
    reasons = sorted(s.reject.reason.split(":")[0] for s in out if s.reject)
    assert reasons == ["edit-malformed", "edit-refused"]
    refused = next(s for s in out if s.reject and s.reject.reason.startswith("edit-refused"))
    assert "stage: input" in refused.reject.reason


def test_an_outage_is_transient_and_the_key_is_in_no_message(server: ImageEditServer, tmp_path: Path) -> None:
    server.fail("overloaded", times=99)
    with pytest.raises(TransientError) as raised:
        stage(server, tmp_path).editor.edit_many([EditRequest(pairs(1)[0].source_image, "make it red", 1)])
    assert KEY not in str(raised.value)
    assert not [p for p in tmp_path.rglob("*.json")]  # an outage is not cached
