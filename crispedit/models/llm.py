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
* **accounting**: requests, retries, tokens and cost per answer, for ``sample.add_usage``;
* **offline under --tiny**: ``model: tiny`` (what ``--tiny`` swaps into every ``llm:`` block)
  asks nothing and answers with schema-valid values drawn from a seed of the request
  (:mod:`crispedit.models.tiny_llm`), as a random-weight twin stands in for a model.

The transport (settings, retries with Retry-After, budgets, the cache, scrubbing) is
:mod:`crispedit.models.endpoint`'s, which the image-edit client shares.

The API key is read from the environment variable the recipe NAMES; it is handed to the
``openai`` client and nowhere else (not to the cache key, files, logs or error messages).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError

from crispedit.models.endpoint import ClientFault, EndpointClient, EndpointConfigError, EndpointSettings, request_key
from crispedit.models.endpoint import clip as _clip
from crispedit.models.spec import TINY_ID

log = logging.getLogger("crispedit")

#: Bump when the meaning of a cached answer changes: old files are then simply not found.
CACHE_VERSION = 1

#: Response formats, from the most to the least constrained; a client only ever moves down.
FORMATS = ("json_schema", "json_object", "text")

#: Words that mark a 400 as "the prompt is too long" rather than "this format is not supported".
_CONTEXT_WORDS = ("context length", "context_length", "maximum context", "too many tokens", "prompt is too long", "too long")

#: Plain-text openings of a refusal from servers that have no ``refusal`` field.
_REFUSAL_OPENINGS = ("i'm sorry", "i am sorry", "i can't", "i cannot", "i can not", "sorry, i", "i won't", "i will not")


class LLMSettings(EndpointSettings):
    """How to reach a model server: the ``llm:`` block of a recipe stage."""

    block: ClassVar[str] = "llm"

    model: str = Field(
        description="model id the server knows, e.g. gpt-4o-mini-2024-07-18 or Qwen/Qwen2.5-7B-Instruct; `tiny` (what --tiny "
        "swaps in) answers offline with schema-valid answers drawn from the request, like a random-weight model",
    )
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature")
    seed: int | None = Field(None, description="sampling seed sent to the server (servers that honour it answer reproducibly)")
    max_tokens: int = Field(512, ge=1, description="most tokens one answer may have")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="rate limit in tokens (prompt estimate + max_tokens) per minute per worker; none when unset"
    )
    max_invalid_retries: int = Field(2, ge=0, description="times an invalid answer is asked again with the error fed back")
    price_in_per_million: float | None = Field(None, ge=0, description="USD per million prompt tokens, for the cost in the summary")
    price_out_per_million: float | None = Field(None, ge=0, description="USD per million answer tokens, for the cost in the summary")

    @property
    def is_tiny(self) -> bool:
        return self.model == TINY_ID


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


#: The old name of :class:`crispedit.models.endpoint.EndpointConfigError` (the CLI catches it).
LLMConfigError = EndpointConfigError


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


class LLMClient(EndpointClient):
    """Asks batches of questions of one endpoint and model; see the module docstring.

    Cheap to construct and picklable before first use: the event loop, the HTTP client and
    the key are set up on the first :meth:`ask_many`, in the process that asks.
    """

    cache_kind: ClassVar[str] = "llm"
    what: ClassVar[str] = "llm"
    settings: LLMSettings

    def __init__(self, settings: LLMSettings, cache_dir: Path | None, stage: str = "llm") -> None:
        self.format = FORMATS[0]
        #: OpenAI's reasoning models refuse max_tokens and want max_completion_tokens; learnt per client.
        self.tokens_param = "max_tokens"
        super().__init__(settings, cache_dir, stage)

    @property
    def needs_key(self) -> bool:
        return not self.settings.is_tiny

    def budgets(self) -> dict[str, int | None]:
        return {"tokens": self.settings.tokens_per_minute}

    # -- public ---------------------------------------------------------------------------
    def ask_many(self, requests: list[LLMRequest]) -> list[LLMAnswer]:
        """Answers in request order; raises TransientError if any request could not be answered."""
        if not requests:
            return []
        if self.settings.is_tiny:
            return [self._tiny(request) for request in requests]
        return self.run_all([self._ask_one(r) for r in requests])

    def cache_key(self, request: LLMRequest) -> str:
        """The hash an answer is stored under: endpoint, model, messages, parameters and schema, never the key."""
        s = self.settings
        return request_key({
            "version": CACHE_VERSION,
            "base_url": s.endpoint(),  # no credential, not even hashed
            "model": s.model,
            "messages": request.messages,
            "parameters": {
                "temperature": s.temperature,
                "seed": request.seed if request.seed is not None else s.seed,
                "max_tokens": s.max_tokens,
                "max_invalid_retries": s.max_invalid_retries,
            },
            "schema": json_schema(request.schema),
        })

    # -- one batch ------------------------------------------------------------------------
    def _tiny(self, request: LLMRequest) -> LLMAnswer:
        """The offline twin's answer: schema-valid values drawn with a seed of the whole request; nothing sent."""
        from crispedit.models.tiny_llm import tiny_answer

        if not getattr(self, "_warned_tiny", False):
            log.warning("llm %s: model tiny answers offline (schema-valid values drawn from each request); no request is sent", self.stage)
            self._warned_tiny = True
        seed = int(self.cache_key(request)[:8], 16)
        try:
            value: BaseModel | None = tiny_answer(request.schema, seed)
            error = None
        except ValueError as problem:
            value, error = None, f"llm-invalid: the tiny model could not fill the schema: {_clip(str(problem))}"
        return LLMAnswer(value=value, error=error, usage=_Usage().as_dict(self.settings, cached=False))

    async def _ask_one(self, request: LLMRequest) -> LLMAnswer:
        key = self.cache_key(request) if self.cache.enabled else None
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
        answer = LLMAnswer(value=value, error=self.scrub(error), usage=usage.as_dict(self.settings, cached=False), raw=self.scrub(raw))
        if key is not None:
            self._write_cache(key, answer, usage)
        return answer

    async def _complete(self, messages: list[dict[str, Any]], request: LLMRequest, usage: _Usage) -> _Reply | str:
        """One answer from the server, through transient retries (:meth:`send`) and response-format fallbacks.

        Returns the reply, or a reject reason for a 4xx that is the request's own fault.
        """
        runtime = self.runtime()
        fmt = self.format
        estimate = _estimate_tokens(messages) + self.settings.max_tokens

        def make_call() -> Any:
            return runtime.client.chat.completions.create(
                model=self.settings.model,
                messages=_with_schema_hint(messages, request.schema, fmt),  # type: ignore[arg-type]
                temperature=self.settings.temperature,
                seed=request.seed if request.seed is not None else self.settings.seed,
                response_format=_response_format(fmt, request.schema),
                **{self.tokens_param: self.settings.max_tokens},  # type: ignore[arg-type]
            )

        while True:
            response = await self.send(make_call, usage, costs={"tokens": estimate})
            if isinstance(response, ClientFault):
                lower = response.message.lower()
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
                return f"llm-bad-request: {response.message}"
            break
        tokens = runtime.buckets.get("tokens")
        if tokens is not None and response.usage is not None:
            tokens.settle(response.usage.total_tokens - estimate)
        if response.usage is not None:
            usage.tokens_in += response.usage.prompt_tokens or 0
            usage.tokens_out += response.usage.completion_tokens or 0
        if FORMATS.index(fmt) > FORMATS.index(self.format):
            log.warning("llm %s: %s refused response_format %s; using %s from now on", self.stage, self.settings.endpoint(),
                        self.format, fmt)
            self.format = fmt
        choice = response.choices[0] if response.choices else None
        if choice is None:
            return _Reply(content=None, refusal=None, finish_reason=None)
        message_ = choice.message
        return _Reply(content=message_.content, refusal=getattr(message_, "refusal", None), finish_reason=choice.finish_reason)

    # -- cache ----------------------------------------------------------------------------
    def _read_cache(self, key: str, schema: type[BaseModel]) -> LLMAnswer | None:
        stored = self.cache.read(key)
        if stored is None:
            return None
        try:
            value = schema.model_validate(stored["value"]) if stored.get("value") is not None else None
        except ValidationError:
            return None  # an answer of another schema: ask again (and overwrite it)
        if value is None and not stored.get("error"):
            return None
        return LLMAnswer(value=value, error=stored.get("error"), usage=_Usage().as_dict(self.settings, cached=True), raw=stored.get("raw"))

    def _write_cache(self, key: str, answer: LLMAnswer, usage: _Usage) -> None:
        self.cache.write(key, {
            "value": answer.value.model_dump(mode="json") if answer.value is not None else None,
            "error": answer.error,
            "raw": answer.raw,
            "model": self.settings.model,
            "tokens_in": usage.tokens_in,
            "tokens_out": usage.tokens_out,
        })


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
