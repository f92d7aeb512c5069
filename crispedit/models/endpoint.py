"""What every client of an OpenAI-compatible endpoint shares: settings, limits, retries, the disk cache.

Chat completions (:mod:`crispedit.models.llm`: the instruct stage, the judge, the captioners,
``recaption``) and image edits (``edit_model``'s ``openai`` backend) meet the same server
behaviour, so they share one implementation of it:

* **settings**: endpoint, model, the key by the NAME of its environment variable, timeout,
  concurrency, a per-minute request budget, retries and backoff (:class:`EndpointSettings`;
  each client's block adds its own parameters and budgets);
* **one runtime per process** (:class:`Runtime`): an event loop thread, the ``AsyncOpenAI``
  client with its own retries off (ours are counted and honour our backoff), a semaphore and
  named token buckets (``requests``, plus ``tokens`` for chat and ``images`` for edits);
* **one retry loop** (:meth:`EndpointClient.send`): 429, 408, 409, 5xx, timeouts and dropped
  connections are retried with exponential backoff and jitter that honours the server's
  ``Retry-After`` (read by :mod:`crispedit.core.backoff`); when retries run out that is
  :class:`~crispedit.core.failures.TransientError` (the shard is built again on a rerun); 401,
  403 and 404 are :class:`EndpointConfigError` (the recipe or the key is wrong); any other 4xx
  comes back as a :class:`ClientFault` for the client to classify (chat: response-format
  fallbacks, context length; edits: content-policy refusals);
* **a disk cache** (:class:`JsonCache`): one JSON file per request key, written atomically, so
  a rerun sends nothing for work already answered and many Ray workers may share one cache;
* **no secret anywhere**: the key goes to the ``openai`` client and nowhere else; every message
  a client emits is scrubbed (:mod:`crispedit.core.redact`, plus the key's own value).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field

from crispedit.core.backoff import backoff_delay, retry_after
from crispedit.core.redact import scrub_text, scrub_url

T = TypeVar("T")


class EndpointConfigError(RuntimeError):
    """The recipe or the environment is wrong (no key, a bad key, an unknown model): fix it and rerun."""


class EndpointSettings(BaseModel):
    """How to reach an OpenAI-compatible server: the part every client's block has."""

    model_config = ConfigDict(extra="forbid")
    #: The recipe block these settings come from, as error messages name it (``llm.api_key_env``).
    block: ClassVar[str] = "endpoint"

    base_url: str = Field(description="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or http://localhost:8000/v1 (vLLM)")
    model: str = Field(description="model id the server knows")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="NAME of the environment variable holding the API key (never the key itself); null for servers without keys",
    )
    timeout: float = Field(60.0, gt=0, description="seconds one request may take before it counts as a (retried) timeout")
    concurrency: int = Field(32, ge=1, description="most requests in flight at once from one worker")
    requests_per_minute: int | None = Field(None, ge=1, description="rate limit in requests per minute per worker; none when unset")
    max_retries: int = Field(6, ge=0, description="retries of a request that met 429, 5xx, a timeout or no connection")
    backoff_initial: float = Field(1.0, gt=0, description="seconds before the first retry; doubles each time, with jitter")
    backoff_max: float = Field(60.0, gt=0, description="longest wait between retries unless the server's Retry-After says more")

    def endpoint(self) -> str:
        """The base URL as it may appear in a cache key, a manifest or a message: credentials scrubbed."""
        return scrub_url(self.base_url.rstrip("/"))


class Bucket:
    """A token bucket holding one second's worth of a per-minute budget.

    A request takes its amount once the bucket holds at least that much (or is full, for an
    amount bigger than the bucket); the level may go negative, so a big request is paid for
    by waiting longer before the next one, and the long-run rate is exactly the budget.
    """

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, amount: float) -> None:
        need = min(amount, self.capacity)
        while True:
            self._refill()
            if self.level >= need:
                self.level -= amount
                return
            await asyncio.sleep((need - self.level) / self.rate)

    def settle(self, difference: float) -> None:
        """Correct a request's estimate once its real size is known (positive: it was bigger)."""
        self._refill()
        self.level = min(self.capacity, self.level - difference)


def one_write_http_client() -> Any:
    """The openai client's default HTTP client, sending each request body in one write.

    An image edit's multipart body streams as ~30 small chunks (a boundary, headers and value per
    form field), each one socket write through anyio's cancel scopes: 40% of the client's CPU per
    request. The body is in memory anyway (the PNG is encoded before the call), so joining it first
    costs nothing: 3 socket sends a request instead of 31, and the client's CPU is what bounds
    throughput at concurrency 16 on a small machine (benchmarks/editor.py: 0.87 -> 0.97 of
    concurrency/latency at 256 requests). Chat bodies are one JSON chunk already. A request hook, not a transport of our own: with its own transport an httpx
    client ignores the proxy environment (HTTPS_PROXY), which users behind a proxy rely on.
    """
    import openai

    async def join_body(request: Any) -> None:
        await request.aread()  # replaces the chunked stream with the joined bytes

    return openai.DefaultAsyncHttpxClient(event_hooks={"request": [join_body]})


class Runtime:
    """Per-process state that must not be pickled: an event loop thread, the openai client, the limits."""

    def __init__(self, settings: EndpointSettings, api_key: str, budgets: dict[str, int | None]) -> None:
        from openai import AsyncOpenAI

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"crispedit-{settings.block}", daemon=True)
        self.thread.start()
        # Retries are ours (so they are counted and honour our backoff), hence max_retries=0. A query in
        # the endpoint (``?api-version=...``, a token) is sent with every request, as the server expects.
        base, _, query = settings.base_url.partition("?")
        self.client = AsyncOpenAI(api_key=api_key, base_url=base, timeout=settings.timeout, max_retries=0,
                                  default_query=dict(parse_qsl(query, keep_blank_values=True)) or None,
                                  http_client=one_write_http_client())
        self.semaphore = asyncio.Semaphore(settings.concurrency)
        every = {"requests": settings.requests_per_minute, **budgets}
        self.buckets = {name: Bucket(per_minute) for name, per_minute in every.items() if per_minute}

    def run(self, coroutine: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()  # type: ignore[arg-type]

    def close(self) -> None:
        try:
            self.run(self.client.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
            self.loop.close()


class Attempts(Protocol):
    """What :meth:`EndpointClient.send` counts for one item (its accounting adds prices and tokens)."""

    requests: int
    retries: int


@dataclass
class Counts:
    """Requests sent and retries made for one item."""

    requests: int = 0
    retries: int = 0


@dataclass
class ClientFault:
    """A 4xx other than 401/403/404/408/409/429: the request's own fault, for the client to classify."""

    status: int
    message: str  # scrubbed, one line
    code: str | None = None
    type: str | None = None
    param: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


class EndpointClient:
    """Base of the clients: settings, the key, the runtime, the retry loop, the cache; see the module docstring.

    Cheap to construct and picklable before first use: the event loop, the HTTP client and the
    key are set up on the first request, in the process that sends it.
    """

    #: The cache's folder under the build's cache (``llm``, ``image_edit``).
    cache_kind: ClassVar[str] = "endpoint"
    #: The reject and error prefix of this client's outages (``llm-unavailable``).
    what: ClassVar[str] = "endpoint"

    def __init__(self, settings: EndpointSettings, cache_dir: Path | None, stage: str) -> None:
        self.settings = settings
        self.stage = stage
        self.cache = JsonCache(cache_dir, self.cache_kind)
        self._runtime: Runtime | None = None
        self._lock = threading.Lock()
        if self.needs_key:
            self.api_key()  # fail now, with the variable's name, rather than on the first batch

    @property
    def needs_key(self) -> bool:
        return True

    def budgets(self) -> dict[str, int | None]:
        """Per-minute budgets beyond requests (chat: tokens; edits: images)."""
        return {}

    # -- set-up ---------------------------------------------------------------------------
    def api_key(self) -> str:
        name = self.settings.api_key_env
        if name is None:
            return "no-key"  # the openai client insists on a non-empty string
        value = os.environ.get(name)
        if not value:
            raise EndpointConfigError(f"environment variable {name} ({self.settings.block}.api_key_env) is not set; export the API key in it")
        return value

    def runtime(self) -> Runtime:
        with self._lock:
            if self._runtime is None:
                self._runtime = Runtime(self.settings, self.api_key(), self.budgets())
            return self._runtime

    def close(self) -> None:
        """Stop the event loop thread and close connections (also fine never to call)."""
        with self._lock:
            runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_runtime"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- a batch --------------------------------------------------------------------------
    def run_all(self, coroutines: Iterable[Awaitable[T]]) -> list[T]:
        """Every coroutine's result, in order; a failure is raised only once all the others are finished
        (and cached), so a rerun sends again only what was not answered: config errors first, then outages."""
        from crispedit.core.failures import TransientError

        async def gather() -> list[Any]:
            return await asyncio.gather(*coroutines, return_exceptions=True)

        results = self.runtime().run(gather())
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        for kind in (EndpointConfigError, TransientError, Exception):
            for result in results:
                if isinstance(result, kind):
                    raise result
        return list(results)

    async def send(self, make_call: Callable[[], Awaitable[T]], attempts: Attempts, costs: dict[str, float] | None = None) -> T | ClientFault:
        """``await make_call()`` through the budgets and the semaphore, retrying what is transient.

        ``costs`` are amounts taken from the named budgets before every attempt (``requests``
        takes 1). Returns the response, or the :class:`ClientFault` of a 4xx that is the
        request's own; raises TransientError when retries run out, EndpointConfigError on
        401/403/404.
        """
        import openai

        from crispedit.core.failures import TransientError

        runtime = self.runtime()
        attempt = 0
        while True:
            for name, amount in {"requests": 1.0, **(costs or {})}.items():
                bucket = runtime.buckets.get(name)
                if bucket is not None:
                    await bucket.take(amount)
            try:
                async with runtime.semaphore:
                    attempts.requests += 1
                    return await make_call()
            except (openai.APIConnectionError, openai.APIStatusError) as failure:
                status = getattr(failure, "status_code", None)
                if status is None or status in (408, 409, 429) or status >= 500:
                    if attempt >= self.settings.max_retries:
                        raise TransientError(
                            f"{self.what}-unavailable: {self.describe(failure)} from {self.settings.model} after {attempt + 1} attempts"
                        ) from None
                    delay = self.backoff(attempt, failure)
                    attempt += 1
                    attempts.retries += 1
                    await asyncio.sleep(delay)
                    continue
                if status in (401, 403, 404):
                    s = self.settings
                    raise EndpointConfigError(
                        f"the server at {s.endpoint()} answered {status} for model {s.model!r}: "
                        f"check {s.block}.model and the key in ${s.api_key_env}"
                    ) from None
                body = getattr(failure, "body", None)
                return ClientFault(
                    status=status, message=self.describe(failure), code=_text(getattr(failure, "code", None)),
                    type=_text(getattr(failure, "type", None)), param=_text(getattr(failure, "param", None)),
                    body=body if isinstance(body, dict) else {},
                )

    def backoff(self, attempt: int, failure: Exception) -> float:
        """Seconds to wait: the server's Retry-After when it gives a readable one, else exponential with jitter."""
        after = retry_after(getattr(getattr(failure, "response", None), "headers", None))
        if after is not None:
            return after + random.uniform(0, 0.1 * after)
        return backoff_delay(attempt, self.settings.backoff_initial, self.settings.backoff_max)

    def describe(self, failure: Exception) -> str:
        """``HTTP 400: the provider's message`` (or the exception type), one line, scrubbed."""
        status = getattr(failure, "status_code", None)
        detail = error_detail(failure)
        text = f"HTTP {status}: {detail}" if status is not None else f"{type(failure).__name__}: {detail}"
        return self.scrub(clip(text)) or type(failure).__name__

    def scrub(self, text: str | None) -> str | None:
        """Belt and braces: no message this client emits ever contains the key's value, or a URL's credentials."""
        if text is None:
            return text
        text = scrub_text(text)
        key = os.environ.get(self.settings.api_key_env) if self.settings.api_key_env is not None else None
        return text.replace(key, "***") if key else text


class JsonCache:
    """One JSON record per key under ``root/<kind>/ab/<key>.json``, written atomically; an unreadable file is absent."""

    def __init__(self, root: Path | None, kind: str) -> None:
        self.root = Path(root) / kind if root is not None else None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def read(self, key: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        try:
            record = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent or unreadable: ask again (and overwrite it)
        return record if isinstance(record, dict) else None

    def write(self, key: str, record: dict[str, Any]) -> None:
        if self.root is None:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle, sort_keys=True)
            os.replace(tmp, path)  # atomic: concurrent writers of one key leave one whole file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def request_key(payload: dict[str, Any]) -> str:
    """sha256 of a canonical JSON payload; the caller puts no credential in it (the endpoint scrubbed, never the key)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def error_detail(failure: Exception) -> str:
    """The provider's own message from an openai exception's body, else the exception's text."""
    body = getattr(failure, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        if body.get("message"):
            return str(body["message"])
    return str(getattr(failure, "message", None) or failure)


def clip(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
