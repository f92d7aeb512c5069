"""The LLM client through the real openai package, over real HTTP, against tests/helpers/llm_server.py."""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from crispedit.core.failures import TransientError
from crispedit.models.llm import LLMClient, LLMConfigError, LLMRequest, LLMSettings
from tests.helpers.llm_server import LLMServer, serving

KEY_ENV = "CRISPEDIT_TEST_LLM_KEY"
KEY = "sk-test-Zq81xVuT0pLm6Yw3-distinctive"


class Edit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instruction: str
    edit_objects: list[str]


server = pytest.fixture(scope="module", name="server")(serving)


@pytest.fixture(autouse=True)
def fresh(server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.wait_idle()  # a slow answer an earlier test gave up on must not count as in flight here
    server.reset()
    server.latency = 0.0
    server.reject_json_schema = server.reject_json_object = server.reject_max_tokens = False
    monkeypatch.setenv(KEY_ENV, KEY)


def settings(url: str, **changes: object) -> LLMSettings:
    """Small timeouts and backoffs: the whole file runs in seconds."""
    base = dict(
        base_url=url, model="local-test-model", api_key_env=KEY_ENV, timeout=2.0, max_retries=3,
        max_invalid_retries=2, backoff_initial=0.01, backoff_max=0.05,
    )
    return LLMSettings.model_validate({**base, **changes})


@pytest.fixture
def make_client(server: LLMServer) -> Iterator:
    made: list[LLMClient] = []

    def make(cache_dir: Path | None = None, url: str | None = None, **changes: object) -> LLMClient:
        client = LLMClient(settings(url or server.url, **changes), cache_dir, stage="test")
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def ask(client: LLMClient, *texts: str) -> list:
    return client.ask_many([LLMRequest([{"role": "user", "content": t}], Edit) for t in texts])


def test_valid_answers_are_validated_counted_and_priced(server: LLMServer, make_client) -> None:
    client = make_client(price_in_per_million=2.0, price_out_per_million=8.0)
    answers = ask(client, *(f"edit number {i}" for i in range(8)))
    assert all(isinstance(a.value, Edit) and a.error is None for a in answers)
    assert len({a.value.instruction for a in answers}) == 8  # one answer per question, in order
    assert server.count == 8 and set(server.formats()) == {"json_schema"}
    sent = server.requests[0]["response_format"]["json_schema"]
    assert sent["strict"] is True and sent["schema"]["required"] == ["instruction", "edit_objects"]
    assert set(server.authorizations) == {f"Bearer {KEY}"}  # the key from the named variable reached the server
    usage = answers[0].usage
    assert usage["requests"] == 1 and usage["retries"] == 0 and usage["cached"] == 0
    assert usage["tokens_in"] > 0 and usage["tokens_out"] > 0
    assert usage["cost_usd"] == pytest.approx((usage["tokens_in"] * 2.0 + usage["tokens_out"] * 8.0) / 1e6)


def test_malformed_json_is_asked_again_with_the_error_fed_back(server: LLMServer, make_client) -> None:
    server.fail("malformed")
    [answer] = ask(make_client(), "make it red")
    assert answer.value is not None and answer.usage["requests"] == 2 and answer.usage["retries"] == 1
    second = server.requests[1]["messages"]
    assert second[-2]["role"] == "assistant" and second[-2]["content"].startswith('{"instruction"')
    assert second[-1]["role"] == "user" and "not JSON" in second[-1]["content"]


def test_schema_violation_is_retried_then_becomes_a_reject(server: LLMServer, make_client) -> None:
    server.fail("schema", times=10)
    [answer] = ask(make_client(max_invalid_retries=2), "make it red")
    assert answer.value is None and answer.error is not None
    assert answer.error.startswith("llm-invalid: ") and "instruction: Field required" in answer.error
    assert server.count == 3 and answer.usage["requests"] == 3 and answer.usage["retries"] == 2
    feedback = server.requests[2]["messages"][-1]["content"]
    assert "does not match the schema" in feedback and "edit_objects: Field required" in feedback


@pytest.mark.parametrize("kind", ["refusal", "text_refusal"])
def test_a_refusal_is_a_reject_and_not_asked_again(server: LLMServer, make_client, kind: str) -> None:
    server.fail(kind)
    [answer] = ask(make_client(), "something it will not do")
    assert answer.value is None and answer.error is not None and answer.error.startswith("llm-refusal: ")
    assert server.count == 1


def test_429_waits_as_long_as_retry_after_says(server: LLMServer, make_client) -> None:
    server.fail("rate_limit", retry_after=0.4)
    began = time.perf_counter()
    [answer] = ask(make_client(), "busy server")
    assert answer.value is not None and answer.usage["retries"] == 1
    assert time.perf_counter() - began >= 0.4  # our own backoff would have waited at most 0.05 s


def _http_date(offset: float) -> str:
    import email.utils

    return email.utils.formatdate(time.time() + offset, usegmt=True)


#: Retry-After as servers send it, and the wait it must give (low, high); None: our own backoff (0.005..0.01 s here).
RETRY_AFTER_FORMS = {
    "seconds": ("1", (1.0, 1.1)),
    "zero": ("0", (0.0, 0.0)),
    "decimal": ("1.5", (1.5, 1.65)),
    "http-date": (lambda: _http_date(30), (27.0, 33.1)),
    "past date": (lambda: _http_date(-3600), (0.0, 0.0)),
    "huge": ("99999999999", (3600.0, 3960.0)),
    "garbage": ("soon, maybe", None),
    "negative": ("-5", None),
    "inf": ("inf", None),
    "nan": ("nan", None),
    "empty": ("", None),
    "broken date": ("Wed, 99 Foo 2024 25:61:00 GMT", None),
    "absent": (None, None),
}


@pytest.mark.parametrize("form", list(RETRY_AFTER_FORMS))
def test_429_with_any_retry_after_is_a_wait_never_a_reject(form: str, server: LLMServer, make_client,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the header holds, the client waits (the server's time, capped, or its own backoff) and asks again."""
    import asyncio

    header, expected = RETRY_AFTER_FORMS[form]
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: object) -> None:  # the waits are recorded, not spent: an hour is an hour
        if delay > 0.001:
            waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    server.fail("rate_limit", retry_after=header() if callable(header) else header)
    [answer] = ask(make_client(), f"busy server, {form}")
    assert answer.value is not None and answer.error is None and answer.usage["retries"] == 1
    assert server.count == 2
    low, high = expected if expected is not None else (0.005, 0.01)
    wait = waits[0] if waits else 0.0
    assert low <= wait <= high, (form, waits)


def test_retry_after_headers_in_every_casing_and_unit() -> None:
    from crispedit.core.backoff import MAX_RETRY_AFTER, retry_after

    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"Retry-After": "3"}) == 3.0 and retry_after({"RETRY-AFTER": "4"}) == 4.0
    assert retry_after({"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}, now=784111777.0 - 10) == 10.0
    assert retry_after({"retry-after": "10"}, now=0) == 10.0 and retry_after({"retry-after": str(10**12)}) == MAX_RETRY_AFTER
    for garbage in ("", "later", "1e3", "-1", "inf", "NaN", "Sun, 32 Nov 1994 08:49:37 GMT", "\x00"):
        assert retry_after({"Retry-After": garbage}) is None, garbage
    assert retry_after(None) is None and retry_after({}) is None and retry_after(object()) is None


def test_500s_are_retried_until_an_answer(server: LLMServer, make_client) -> None:
    server.fail("server_error", times=2)
    [answer] = ask(make_client(), "flaky server")
    assert answer.value is not None and answer.usage["requests"] == 3 and answer.usage["retries"] == 2


def test_a_timeout_is_retried(server: LLMServer, make_client) -> None:
    server.fail("slow", delay=1.0)
    began = time.perf_counter()
    [answer] = ask(make_client(timeout=0.3), "slow server")
    assert answer.value is not None and answer.usage["retries"] == 1
    assert time.perf_counter() - began < 1.0  # the slow answer was given up on, not waited for


def test_timeouts_to_the_end_raise_transient_error(server: LLMServer, make_client) -> None:
    server.fail("slow", times=10, delay=1.0)
    with pytest.raises(TransientError, match="llm-unavailable"):
        ask(make_client(timeout=0.2, max_retries=1), "slow server")


def test_an_outage_raises_transient_error_never_a_reject(make_client) -> None:
    gone = LLMServer().start()
    url = gone.url
    gone.stop()
    with pytest.raises(TransientError, match="llm-unavailable: APIConnectionError"):
        ask(make_client(url=url, max_retries=1), "anyone there?")


def test_answers_finished_before_an_outage_are_cached_and_not_asked_again(server: LLMServer, make_client, tmp_path: Path) -> None:
    server.fail("server_error", times=100, match="doomed")
    with pytest.raises(TransientError):
        ask(make_client(tmp_path, max_retries=1), "fine one", "doomed", "fine two")
    server.reset()
    answers = ask(make_client(tmp_path), "fine one", "doomed", "fine two")
    assert server.count == 1 and "doomed" in str(server.requests[0]["messages"])
    assert [a.usage["cached"] for a in answers] == [1, 0, 1]


def test_a_server_refusing_json_schema_gets_json_object_from_then_on(server: LLMServer, make_client) -> None:
    server.reject_json_schema = True
    client = make_client()
    [first] = ask(client, "one")
    assert first.value is not None and server.formats() == ["json_schema", "json_object"]
    assert client.format == "json_object"
    assert "JSON schema of the answer" in server.requests[1]["messages"][0]["content"]  # the prompt carries the schema
    ask(client, "two", "three")
    assert server.formats() == ["json_schema", "json_object", "json_object", "json_object"]


def test_a_text_only_server_answers_json_in_prose(server: LLMServer, make_client) -> None:
    server.reject_json_schema = server.reject_json_object = True
    server.fail("fenced", times=5)
    client = make_client()
    [answer] = ask(client, "one")
    assert answer.value is not None and client.format == "text"
    assert server.formats() == ["json_schema", "json_object", "text"]


def test_a_server_that_wants_max_completion_tokens_gets_it(server: LLMServer, make_client) -> None:
    server.reject_max_tokens = True
    client = make_client(max_tokens=300)
    ask(client, "one")
    ask(client, "two")
    assert [("max_tokens" in r, r.get("max_completion_tokens")) for r in server.requests] == [(True, None), (False, 300), (False, 300)]
    assert client.format == "json_schema"


def test_a_context_length_400_is_a_reject_without_retries(server: LLMServer, make_client) -> None:
    server.fail("bad_request")
    client = make_client()
    [answer] = ask(client, "a very long prompt")
    assert answer.error is not None and answer.error.startswith("llm-bad-request: HTTP 400") and "context length" in answer.error
    assert server.count == 1 and client.format == "json_schema"


def test_a_cached_rerun_sends_no_request(server: LLMServer, make_client, tmp_path: Path) -> None:
    first = ask(make_client(tmp_path), "a", "b", "c")
    assert server.count == 3
    again = ask(make_client(tmp_path), "a", "b", "c")
    assert server.count == 3
    assert [a.value for a in again] == [a.value for a in first]
    assert all(a.usage == {"requests": 0, "retries": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0, "cached": 1} for a in again)
    ask(make_client(tmp_path, temperature=0.2), "a")  # other parameters: another question
    assert server.count == 4
    files = list((tmp_path / "llm").rglob("*.json"))
    assert len(files) == 4 and not list((tmp_path / "llm").rglob(".tmp-*"))


def test_rejects_are_cached_too(server: LLMServer, make_client, tmp_path: Path) -> None:
    server.fail("refusal")
    [first] = ask(make_client(tmp_path), "no")
    [again] = ask(make_client(tmp_path), "no")
    assert first.error == again.error and again.error.startswith("llm-refusal") and server.count == 1


def test_the_key_is_never_written_or_logged(server: LLMServer, make_client, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.fail("malformed")
    server.fail("bad_request", match="too long")
    ask(make_client(tmp_path), "one", "two", "too long")
    server.fail("unauthorized")
    with pytest.raises(LLMConfigError) as raised:
        ask(make_client(tmp_path), "three")
    assert KEY_ENV in str(raised.value) and KEY not in str(raised.value)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if KEY.encode() in p.read_bytes()]
    assert KEY not in caplog.text


def test_concurrency_is_bounded(server: LLMServer, make_client) -> None:
    server.latency = 0.05
    ask(make_client(concurrency=3), *(f"q{i}" for i in range(12)))
    assert 2 <= server.max_in_flight <= 3


def test_requests_per_minute_are_limited(server: LLMServer, make_client) -> None:
    began = time.perf_counter()
    ask(make_client(requests_per_minute=1200), *(f"q{i}" for i in range(30)))  # 20/s after a burst of 20
    assert time.perf_counter() - began >= 0.45


def test_a_missing_key_variable_is_named(monkeypatch: pytest.MonkeyPatch, server: LLMServer) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(LLMConfigError, match=KEY_ENV):
        LLMClient(settings(server.url), None)


def test_settings_refuse_unknown_keys_and_describe_every_field() -> None:
    with pytest.raises(ValidationError, match="api_key"):
        LLMSettings.model_validate({"base_url": "http://x/v1", "model": "m", "api_key": "sk-oops"})
    assert all(f.description for f in LLMSettings.model_fields.values())


def test_the_client_pickles_without_its_connections(server: LLMServer, make_client) -> None:
    client = make_client()
    ask(client, "before")
    clone = pickle.loads(pickle.dumps(client))
    assert clone._runtime is None and KEY.encode() not in pickle.dumps(client)
    [answer] = ask(clone, "after")
    assert answer.value is not None
    clone.close()


def test_a_token_budget_makes_a_big_request_wait_for_what_it_overdrew() -> None:
    import asyncio

    from crispedit.models.endpoint import Bucket as _Bucket

    async def timed() -> tuple[float, float]:
        bucket = _Bucket(60_000)  # 1,000 tokens a second, a bucket of one second's worth
        began = time.perf_counter()
        await bucket.take(1_200)  # bigger than the bucket: taken once it is full, leaving it 200 short
        first = time.perf_counter() - began
        await bucket.take(1)
        return first, time.perf_counter() - began

    first, second = asyncio.run(timed())
    assert first < 0.05 and 0.18 <= second < 0.5
