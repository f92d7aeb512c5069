"""One client for every stage that asks a model server for structured answers.

The instruct stage, the MLLM judge and the video captioner all need the same things from an
OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, Ollama...), so they get them here once:

* **structured output**: a ``json_schema`` response format made from a pydantic model; when the
  server refuses it, ``json_object``, then JSON parsed out of plain text (remembered per client,
  so a server that refuses once is not asked again). Every answer is validated; an invalid
  one is asked again with the validation error fed back, and after ``max_invalid_retries``
  it becomes a reject whose reason says what was wrong;
* **failures kept apart**: a server that is down, overloaded (429/5xx) or slow is retried with
  exponential backoff and jitter that honours ``Retry-After``; when retries run out that is
  :class:`~crispedit.core.failures.TransientError` (the shard is built again on a rerun), never
  a reject. A refusal, an invalid answer or a 4xx other than 429 (a context-length error) is
  the sample's fault and comes back as :attr:`LLMAnswer.error`;
* **at scale**: bounded concurrency inside a batch and token buckets for requests and tokens
  per minute;
* **a disk cache** keyed by a hash of (endpoint, model, messages, parameters, schema), one file
  per answer written atomically, so a rerun sends nothing for work already answered and many
  Ray workers may share one cache;
* **accounting**: requests, retries, tokens and cost per answer, for ``sample.add_usage``.

The API key is read from the environment variable the recipe NAMES; it is handed to the
``openai`` client and nowhere else (not to the cache key, files, logs or error messages).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crispedit.core.backoff import backoff_delay, retry_after
from crispedit.core.redact import scrub_text, scrub_url

log = logging.getLogger("crispedit")

#: Bump when the meaning of a cached answer changes: old files are then simply not found.
CACHE_VERSION = 1

#: Response formats, from the most to the least constrained; a client only ever moves down.
FORMATS = ("json_schema", "json_object", "text")

#: Words that mark a 400 as "the prompt is too long" rather than "this format is not supported".
_CONTEXT_WORDS = ("context length", "context_length", "maximum context", "too many tokens", "prompt is too long", "too long")

#: Plain-text openings of a refusal from servers that have no ``refusal`` field.
_REFUSAL_OPENINGS = ("i'm sorry", "i am sorry", "i can't", "i cannot", "i can not", "sorry, i", "i won't", "i will not")


class LLMSettings(BaseModel):
    """How to reach a model server: the ``llm:`` block of a recipe stage."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or http://localhost:8000/v1 (vLLM)")
    model: str = Field(description="model id the server knows, e.g. gpt-4o-mini-2024-07-18 or Qwen/Qwen2.5-7B-Instruct")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="NAME of the environment variable holding the API key (never the key itself); null for servers without keys",
    )
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature")
    seed: int | None = Field(None, description="sampling seed sent to the server (servers that honour it answer reproducibly)")
    max_tokens: int = Field(512, ge=1, description="most tokens one answer may have")
    timeout: float = Field(60.0, gt=0, description="seconds one request may take before it counts as a (retried) timeout")
    concurrency: int = Field(32, ge=1, description="most requests in flight at once from one worker")
    requests_per_minute: int | None = Field(None, ge=1, description="rate limit in requests per minute per worker; none when unset")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="rate limit in tokens (prompt estimate + max_tokens) per minute per worker; none when unset"
    )
    max_retries: int = Field(6, ge=0, description="retries of a request that met 429, 5xx, a timeout or no connection")
    max_invalid_retries: int = Field(2, ge=0, description="times an invalid answer is asked again with the error fed back")
    backoff_initial: float = Field(1.0, gt=0, description="seconds before the first retry; doubles each time, with jitter")
    backoff_max: float = Field(60.0, gt=0, description="longest wait between retries unless the server's Retry-After says more")
    price_in_per_million: float | None = Field(None, ge=0, description="USD per million prompt tokens, for the cost in the summary")
    price_out_per_million: float | None = Field(None, ge=0, description="USD per million answer tokens, for the cost in the summary")


@dataclass
class LLMRequest:
    """One question: chat messages (text or image parts as data URLs) and the answer's model.

    ``seed``, when set, replaces the settings' seed for this request (a per-item seed makes
    otherwise identical questions distinct, to the server and to the cache).
    """

    messages: list[dict[str, Any]]
    schema: type[BaseModel]
    seed: int | None = None


@dataclass
class LLMAnswer:
    """The validated answer, or a reject reason (``"category: detail"``), and what it cost."""

    value: BaseModel | None
    error: str | None
    usage: dict[str, float] = field(default_factory=dict)
    #: the last answer's text when it stayed invalid (kept for the reject row, never turned into a value)
    raw: str | None = None


class LLMConfigError(RuntimeError):
    """The recipe or the environment is wrong (no key, a bad key, an unknown model): fix it and rerun."""


@dataclass
class _Usage:
    requests: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def as_dict(self, settings: LLMSettings, cached: bool) -> dict[str, float]:
        cost = 0.0
        if settings.price_in_per_million is not None or settings.price_out_per_million is not None:
            cost = (self.tokens_in * (settings.price_in_per_million or 0.0) + self.tokens_out * (settings.price_out_per_million or 0.0)) / 1e6
        return {
            "requests": self.requests,
            "retries": self.retries,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": cost,
            "cached": int(cached),
        }


class _InvalidAnswer(ValueError):
    """The server answered, but not with what the schema asks for."""


class _Refusal(Exception):
    """The model declined to answer."""


@dataclass
class _Reply:
    content: str | None
    refusal: str | None
    finish_reason: str | None


class _Bucket:
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


class _Runtime:
    """Per-process state that must not be pickled: an event loop thread and the openai client."""

    def __init__(self, settings: LLMSettings, api_key: str) -> None:
        from openai import AsyncOpenAI

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="crispedit-llm", daemon=True)
        self.thread.start()
        # Retries are ours (so they are counted and honour our backoff), hence max_retries=0. A query in
        # the endpoint (``?api-version=...``, a token) is sent with every request, as the server expects.
        base, _, query = settings.base_url.partition("?")
        self.client = AsyncOpenAI(api_key=api_key, base_url=base, timeout=settings.timeout, max_retries=0,
                                  default_query=dict(parse_qsl(query, keep_blank_values=True)) or None)
        self.semaphore = asyncio.Semaphore(settings.concurrency)
        self.requests = _Bucket(settings.requests_per_minute) if settings.requests_per_minute else None
        self.tokens = _Bucket(settings.tokens_per_minute) if settings.tokens_per_minute else None

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        try:
            self.run(self.client.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
            self.loop.close()


class LLMClient:
    """Asks batches of questions of one endpoint and model; see the module docstring.

    Cheap to construct and picklable before first use: the event loop, the HTTP client and
    the key are set up on the first :meth:`ask_many`, in the process that asks.
    """

    def __init__(self, settings: LLMSettings, cache_dir: Path | None, stage: str = "llm") -> None:
        self.settings = settings
        self.cache_dir = Path(cache_dir) / "llm" if cache_dir is not None else None
        self.stage = stage
        self.format = FORMATS[0]
        #: OpenAI's reasoning models refuse max_tokens and want max_completion_tokens; learnt per client.
        self.tokens_param = "max_tokens"
        self._runtime: _Runtime | None = None
        self._lock = threading.Lock()
        self._api_key()  # fail now, with the variable's name, rather than on the first batch

    # -- public ---------------------------------------------------------------------------
    def ask_many(self, requests: list[LLMRequest]) -> list[LLMAnswer]:
        """Answers in request order; raises TransientError if any request could not be answered."""
        if not requests:
            return []
        return self._ensure_runtime().run(self._ask_all(requests))

    def cache_key(self, request: LLMRequest) -> str:
        """The hash an answer is stored under: endpoint, model, messages, parameters and schema, never the key."""
        s = self.settings
        payload = {
            "version": CACHE_VERSION,
            "base_url": scrub_url(s.base_url.rstrip("/")),  # no credential, not even hashed
            "model": s.model,
            "messages": request.messages,
            "parameters": {
                "temperature": s.temperature,
                "seed": request.seed if request.seed is not None else s.seed,
                "max_tokens": s.max_tokens,
                "max_invalid_retries": s.max_invalid_retries,
            },
            "schema": json_schema(request.schema),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()

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

    # -- set-up ---------------------------------------------------------------------------
    def _api_key(self) -> str:
        name = self.settings.api_key_env
        if name is None:
            return "no-key"  # the openai client insists on a non-empty string
        value = os.environ.get(name)
        if not value:
            raise LLMConfigError(f"environment variable {name} (llm.api_key_env) is not set; export the API key in it")
        return value

    def _ensure_runtime(self) -> _Runtime:
        with self._lock:
            if self._runtime is None:
                self._runtime = _Runtime(self.settings, self._api_key())
            return self._runtime

    # -- one batch ------------------------------------------------------------------------
    async def _ask_all(self, requests: list[LLMRequest]) -> list[LLMAnswer]:
        from crispedit.core.failures import TransientError  # here: crispedit.stages imports this module

        results = await asyncio.gather(*(self._ask_one(r) for r in requests), return_exceptions=True)
        # Every other answer is finished (and cached) before a failure is raised, so a rerun
        # asks again only what was not answered.
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        for kind in (LLMConfigError, TransientError, Exception):
            for result in results:
                if isinstance(result, kind):
                    raise result
        return list(results)  # type: ignore[arg-type]

    async def _ask_one(self, request: LLMRequest) -> LLMAnswer:
        key = self.cache_key(request) if self.cache_dir is not None else None
        if key is not None:
            cached = self._read_cache(key, request.schema)
            if cached is not None:
                return cached
        usage = _Usage()
        messages = list(request.messages)
        value: BaseModel | None = None
        error: str | None = None
        raw: str | None = None
        for round_ in range(self.settings.max_invalid_retries + 1):
            reply = await self._complete(messages, request, usage)
            if isinstance(reply, str):  # a 4xx the sample caused
                error = reply
                break
            try:
                value = _parse(reply, request.schema)
                break
            except _Refusal as refusal:
                error = f"llm-refusal: {_clip(str(refusal))}"
                break
            except _InvalidAnswer as invalid:
                raw = _clip(reply.content or "")
                error = f"llm-invalid: {_clip(str(invalid))} (after {round_ + 1} answers)"
                if round_ < self.settings.max_invalid_retries:
                    usage.retries += 1
                    messages = [*messages, {"role": "assistant", "content": reply.content or ""}, _feedback(invalid)]
        if value is not None:
            error = raw = None
        answer = LLMAnswer(value=value, error=self._scrub(error), usage=usage.as_dict(self.settings, cached=False), raw=self._scrub(raw))
        if key is not None:
            self._write_cache(key, answer, usage)
        return answer

    async def _complete(self, messages: list[dict[str, Any]], request: LLMRequest, usage: _Usage) -> _Reply | str:
        """One answer from the server, through transient retries and response-format fallbacks.

        Returns the reply, or a reject reason for a 4xx that is the request's own fault.
        """
        import openai

        from crispedit.core.failures import TransientError

        runtime = self._ensure_runtime()
        fmt = self.format
        attempt = 0
        estimate = _estimate_tokens(messages) + self.settings.max_tokens
        while True:
            if runtime.requests is not None:
                await runtime.requests.take(1)
            if runtime.tokens is not None:
                await runtime.tokens.take(estimate)
            try:
                async with runtime.semaphore:
                    usage.requests += 1
                    response = await runtime.client.chat.completions.create(
                        model=self.settings.model,
                        messages=_with_schema_hint(messages, request.schema, fmt),  # type: ignore[arg-type]
                        temperature=self.settings.temperature,
                        seed=request.seed if request.seed is not None else self.settings.seed,
                        response_format=_response_format(fmt, request.schema),
                        **{self.tokens_param: self.settings.max_tokens},  # type: ignore[arg-type]
                    )
            except (openai.APIConnectionError, openai.APIStatusError) as failure:
                status = getattr(failure, "status_code", None)
                if status is None or status in (408, 409, 429) or status >= 500:
                    if attempt >= self.settings.max_retries:
                        raise TransientError(
                            f"llm-unavailable: {self._describe(failure)} from {self.settings.model} after {attempt + 1} attempts"
                        ) from None
                    delay = self._backoff(attempt, failure)
                    attempt += 1
                    usage.retries += 1
                    await asyncio.sleep(delay)
                    continue
                if status in (401, 403, 404):
                    raise LLMConfigError(
                        f"the server at {scrub_url(self.settings.base_url)} answered {status} for model {self.settings.model!r}: "
                        f"check llm.model and the key in ${self.settings.api_key_env}"
                    ) from None
                message = self._describe(failure)
                lower = message.lower()
                if self.tokens_param == "max_tokens" and "max_completion_tokens" in lower:
                    log.warning("llm %s: %s wants max_completion_tokens; sending that from now on", self.stage, self.settings.model)
                    self.tokens_param = "max_completion_tokens"
                    usage.retries += 1
                    continue
                if fmt != FORMATS[-1] and not any(word in lower for word in _CONTEXT_WORDS):
                    # Perhaps the server does not support this response format: try the next one
                    # for this request, and make it the client's choice only once it works.
                    fmt = FORMATS[FORMATS.index(fmt) + 1]
                    usage.retries += 1
                    continue
                return f"llm-bad-request: {message}"
            if runtime.tokens is not None and response.usage is not None:
                runtime.tokens.settle(response.usage.total_tokens - estimate)
            if response.usage is not None:
                usage.tokens_in += response.usage.prompt_tokens or 0
                usage.tokens_out += response.usage.completion_tokens or 0
            if FORMATS.index(fmt) > FORMATS.index(self.format):
                log.warning("llm %s: %s refused response_format %s; using %s from now on", self.stage, scrub_url(self.settings.base_url),
                            self.format, fmt)
                self.format = fmt
            choice = response.choices[0] if response.choices else None
            if choice is None:
                return _Reply(content=None, refusal=None, finish_reason=None)
            message_ = choice.message
            return _Reply(content=message_.content, refusal=getattr(message_, "refusal", None), finish_reason=choice.finish_reason)

    def _backoff(self, attempt: int, failure: Exception) -> float:
        """Seconds to wait: the server's Retry-After when it gives a readable one, else exponential with jitter."""
        after = retry_after(getattr(getattr(failure, "response", None), "headers", None))
        if after is not None:
            return after + random.uniform(0, 0.1 * after)
        return backoff_delay(attempt, self.settings.backoff_initial, self.settings.backoff_max)

    def _describe(self, failure: Exception) -> str:
        status = getattr(failure, "status_code", None)
        detail = _error_detail(failure)
        text = f"HTTP {status}: {detail}" if status is not None else f"{type(failure).__name__}: {detail}"
        return self._scrub(_clip(text)) or type(failure).__name__

    def _scrub(self, text: str | None) -> str | None:
        """Belt and braces: no message this client emits ever contains the key's value, or a URL's credentials."""
        if text is None:
            return text
        text = scrub_text(text)
        key = os.environ.get(self.settings.api_key_env) if self.settings.api_key_env is not None else None
        return text.replace(key, "***") if key else text

    # -- cache ----------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read_cache(self, key: str, schema: type[BaseModel]) -> LLMAnswer | None:
        path = self._cache_path(key)
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            value = schema.model_validate(stored["value"]) if stored.get("value") is not None else None
        except (OSError, ValueError, KeyError, ValidationError):
            return None  # absent or unreadable: ask again (and overwrite it)
        if value is None and not stored.get("error"):
            return None
        return LLMAnswer(value=value, error=stored.get("error"), usage=_Usage().as_dict(self.settings, cached=True), raw=stored.get("raw"))

    def _write_cache(self, key: str, answer: LLMAnswer, usage: _Usage) -> None:
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "value": answer.value.model_dump(mode="json") if answer.value is not None else None,
            "error": answer.error,
            "raw": answer.raw,
            "model": self.settings.model,
            "tokens_in": usage.tokens_in,
            "tokens_out": usage.tokens_out,
        }
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle, sort_keys=True)
            os.replace(tmp, path)  # atomic: concurrent writers of one key leave one whole file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --- helpers ------------------------------------------------------------------------------


@functools.cache
def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema, made once per class (pydantic takes about half a millisecond)."""
    return model.model_json_schema()


def schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent to the server, with ``strict`` only when the model allows it.

    OpenAI's strict mode needs every property required and no extra keys; models with
    optional fields are sent non-strict (the answer is still validated here).
    """
    schema = json_schema(model)
    return {"name": re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64], "schema": schema, "strict": _is_strict(schema)}


def _is_strict(schema: dict[str, Any]) -> bool:
    nodes = [schema, *schema.get("$defs", {}).values()]
    for node in nodes:
        if node.get("type") == "object":
            props = set(node.get("properties", {}))
            if node.get("additionalProperties", True) is not False or set(node.get("required", [])) != props:
                return False
    return True


def _response_format(fmt: str, schema: type[BaseModel]) -> dict[str, Any] | Any:
    from openai import omit

    if fmt == "json_schema":
        return {"type": "json_schema", "json_schema": schema_for(schema)}
    if fmt == "json_object":
        return {"type": "json_object"}
    return omit


def _with_schema_hint(messages: list[dict[str, Any]], schema: type[BaseModel], fmt: str) -> list[dict[str, Any]]:
    """Without a json_schema format the server does not see the schema, so the prompt must carry it."""
    if fmt == "json_schema":
        return messages
    hint = (
        "Answer with one JSON object and nothing else. JSON schema of the answer:\n"
        + json.dumps(json_schema(schema), sort_keys=True)
    )
    return [{"role": "system", "content": hint}, *messages]


def _parse(reply: _Reply, schema: type[BaseModel]) -> BaseModel:
    if reply.refusal:
        raise _Refusal(reply.refusal)
    if reply.finish_reason == "content_filter":
        raise _Refusal("the server's content filter stopped the answer")
    text = (reply.content or "").strip()
    if not text:
        raise _InvalidAnswer("the answer was empty")
    if reply.finish_reason == "length":
        raise _InvalidAnswer("the answer was cut off at max_tokens; answer more briefly")
    try:
        data = json.loads(text)
    except ValueError:
        data = _json_in_text(text)
        if data is None:
            if text.lower().startswith(_REFUSAL_OPENINGS):
                raise _Refusal(text) from None
            raise _InvalidAnswer(f"the answer is not JSON: {text[:80]!r}") from None
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in error.errors()[:5])
        raise _InvalidAnswer(f"the answer does not match the schema: {problems}") from None


def _json_in_text(text: str) -> Any | None:
    """A JSON object inside prose or a ```json fence``` (what text-only servers often return)."""
    fenced = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.DOTALL)
    candidates = [fenced.group(1)] if fenced else []
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def _feedback(invalid: _InvalidAnswer) -> dict[str, str]:
    return {
        "role": "user",
        "content": f"That answer was not valid: {invalid}. Answer again with only a JSON object that matches the schema.",
    }


def _estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """About four characters a token; an image part counts as a fixed 1,000 tokens."""
    chars, images = 0, 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    chars += len(part.get("text", ""))
                else:
                    images += 1
    return chars // 4 + 1000 * images + 8 * len(messages)


def _error_detail(failure: Exception) -> str:
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


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
