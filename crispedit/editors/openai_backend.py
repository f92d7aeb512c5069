"""The ``openai`` backend of ``edit_model``: ``images.edit`` on any OpenAI-compatible endpoint.

One :class:`ImageEditClient` per stage worker, on the transport the LLM client uses
(:mod:`crispedit.models.endpoint`: the key by its variable's name, concurrency, per-minute
request and image budgets, retries with Retry-After, the disk cache, scrubbing). Each candidate
is one request (its own seed, in the cache key even when the server ignores it, so N candidates
are N requests and never one cached answer N times). Every outcome is classified:

* an image: decoded and checked as any source image is (crispedit.core.images);
* a refusal (400 ``moderation_blocked``, ``content_policy_violation``, type
  ``image_generation_user_error``, or a "safety system" message): a reject
  ``edit-refused: <the provider's message> [stage: input; categories: ...]``;
* a malformed answer (no ``data``, fewer images than asked, ``b64_json`` that is not base64 or
  not an image, a ``url`` instead of bytes): a reject ``edit-malformed: ...``;
* another 400 about a parameter the recipe set (size, quality, model...): a config error (every
  row would fail the same way); any other 4xx: a reject ``edit-bad-request``;
* an outage (429, 5xx, timeouts, no connection) after the retries: TransientError (the shard is
  built on a rerun); a bad key or a wrong model (401/403/404): a config error.

Answers and rejects are cached (they are the request's outcome); outages are not. The cache key
hashes the endpoint without credentials, the model, the source's pixels, the prompt, every
parameter sent and the seed: never the key. Accounting per candidate: requests, retries, image
and token counts, cost (per image, or per token when priced so), and whether it was cached.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import Field

from crispedit.models.endpoint import ClientFault, Counts, EndpointClient, EndpointConfigError, EndpointSettings, request_key

CACHE_VERSION = 1

#: Images of at most this many values (128 x 128 RGB) are hashed, encoded and decoded on the event loop: about a
#: millisecond of work, less than a round trip to a worker thread on a loaded machine (benchmarks/editor.py).
INLINE_VALUES = 128 * 128 * 3

T = TypeVar("T")

#: 400 codes and types by which providers say "the safety system refused this".
REFUSAL_CODES = ("moderation_blocked", "content_policy_violation", "content_filter", "safety_violation")
REFUSAL_TYPES = ("image_generation_user_error",)
REFUSAL_WORDS = ("safety system", "content policy", "content_policy")
#: Request parameters the recipe sets: a 400 naming one is the recipe's fault, not the sample's.
RECIPE_PARAMS = ("model", "size", "quality", "output_format", "background", "input_fidelity", "n", "moderation", "response_format")


class ImageEditSettings(EndpointSettings):
    """The ``openai:`` block of ``edit_model``: the endpoint, the image model and what each edit asks for."""

    block: ClassVar[str] = "openai"

    base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible endpoint with POST /images/edits")
    model: str = Field("gpt-image-1.5", description="image model, e.g. gpt-image-1.5, or a compatible server's model name")
    timeout: float = Field(300.0, gt=0, description="seconds one edit may take before it counts as a (retried) timeout")
    concurrency: int = Field(16, ge=1, description="most edits in flight at once from one worker")
    size: str = Field("auto", description="'auto' (the model picks from the input) or WIDTHxHEIGHT the model supports")
    quality: Literal["low", "medium", "high", "auto"] = Field("auto", description="rendering quality (the price scales with it)")
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="format the server encodes the edit in")
    background: Literal["opaque", "transparent", "auto"] | None = Field(None, description="null: the server's default")
    input_fidelity: Literal["low", "high"] | None = Field(None, description="how closely the edit keeps the input (GPT image models)")
    response_format: Literal["b64_json"] | None = Field(
        None, description="b64_json for servers that answer URLs by default (dall-e-2, some compatible servers); GPT image models refuse it",
    )
    send_seed: bool = Field(False, description="send each candidate's seed as a `seed` field (compatible servers that honour one)")
    images_per_minute: int | None = Field(None, ge=1, description="image budget per minute per worker (OpenAI limits images per minute)")
    price_per_image: float | None = Field(None, ge=0, description="USD per edited image, for the cost in the summary")
    price_in_per_million: float | None = Field(None, ge=0, description="USD per million input tokens (text + image), when priced by token")
    price_out_per_million: float | None = Field(None, ge=0, description="USD per million output (image) tokens, when priced by token")


@dataclass
class EditRequest:
    """One candidate: the source (uint8 RGB), the instruction, its seed."""

    image: np.ndarray
    instruction: str
    seed: int


@dataclass
class EditAnswer:
    """The edited image (uint8 RGB), or a reject reason, and what it cost."""

    image: np.ndarray | None
    error: str | None
    usage: dict[str, float] = field(default_factory=dict)


class _Malformed(Exception):
    """The server answered 200, but not with an image."""


class ImageEditClient(EndpointClient):
    """Edits batches through one endpoint and model; cheap to construct and picklable before first use."""

    cache_kind: ClassVar[str] = "image_edit"
    what: ClassVar[str] = "edit"
    settings: ImageEditSettings

    def __init__(self, settings: ImageEditSettings, cache_dir: Path | None, stage: str = "edit_model") -> None:
        super().__init__(settings, cache_dir, stage)

    def budgets(self) -> dict[str, int | None]:
        return {"images": self.settings.images_per_minute}

    def edit_many(self, requests: list[EditRequest]) -> list[EditAnswer]:
        """Answers in request order; raises TransientError once every other request is answered (and cached)."""
        if not requests:
            return []
        return self.run_all([self._edit_one(r) for r in requests])

    def params(self) -> dict[str, Any]:
        """Every form field sent besides the image and the prompt (what the cache key covers)."""
        s = self.settings
        out: dict[str, Any] = {"model": s.model, "n": 1, "size": s.size, "quality": s.quality, "output_format": s.output_format}
        for name in ("background", "input_fidelity", "response_format"):
            if getattr(s, name) is not None:
                out[name] = getattr(s, name)
        return out

    def cache_key(self, request: EditRequest) -> str:
        return request_key({
            "version": CACHE_VERSION,
            "endpoint": self.settings.endpoint(),
            "image": pixels_hash(request.image),
            "prompt": request.instruction,
            "params": self.params(),
            "seed": request.seed,
            "seed_sent": self.settings.send_seed,
        })

    # -- one request ----------------------------------------------------------------------
    async def _edit_one(self, request: EditRequest) -> EditAnswer:
        key, answer, upload = await self._off_loop(request.image, self._prepare, request)
        if answer is not None:
            return answer
        runtime = self.runtime()
        counts = Counts()
        extra = {"seed": request.seed} if self.settings.send_seed else None

        def make_call() -> Any:
            return runtime.client.images.edit(image=("image.png", upload, "image/png"), prompt=request.instruction,
                                              extra_body=extra, **self.params())

        result = await self.send(make_call, counts, costs={"images": 1.0})
        usage: dict[str, float] = {"requests": counts.requests, "retries": counts.retries}
        encoded: str | None = None
        error: str | None = None
        if isinstance(result, ClientFault):
            error = self.classify(result)
        else:
            usage.update(_token_usage(result))
            try:
                encoded = _b64_image(result)
            except _Malformed as malformed:
                error = f"edit-malformed: {malformed}"
        return await self._off_loop(request.image, self._finish, key, encoded, error, usage)

    async def _off_loop(self, image: np.ndarray, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in a worker thread for a large image, where hashing, encoding and decoding take
        milliseconds (the event loop keeps the requests in flight moving meanwhile); inline for a small one,
        where the hop to a thread and back costs more than the work (two GIL hand-offs under load)."""
        if image.size <= INLINE_VALUES:
            return work(*args)
        return await asyncio.to_thread(work, *args)

    def _prepare(self, request: EditRequest) -> tuple[str, EditAnswer | None, bytes | None]:
        """(cache key, the cached answer or None, the PNG upload when the request must be sent): one hop off the loop."""
        key = self.cache_key(request)
        cached = self.cache.read(key)
        answer = _from_record(cached) if cached is not None else None
        return key, answer, None if answer is not None else png_bytes(request.image)

    def _finish(self, key: str, encoded: str | None, error: str | None, usage: dict[str, float]) -> EditAnswer:
        """Decode and check the answer's image, account for it and cache the outcome: one hop off the loop."""
        image: np.ndarray | None = None
        if encoded is not None:
            try:
                image = _decode(encoded)
            except _Malformed as malformed:
                error, encoded = f"edit-malformed: {malformed}", None
        usage.update(images=int(image is not None), cost_usd=self._cost(int(image is not None), usage), cached=0)
        error = self.scrub(error)
        self.cache.write(key, {"b64": encoded, "error": error, "model": self.settings.model,
                               "tokens_in": usage.get("tokens_in", 0), "tokens_out": usage.get("tokens_out", 0)})
        return EditAnswer(image=image, error=error, usage=usage)

    def classify(self, fault: ClientFault) -> str:
        """A refusal with the provider's reason, else a bad request; a parameter the recipe set is a config error."""
        message = fault.message
        lower = message.lower()
        if fault.code in REFUSAL_CODES or fault.type in REFUSAL_TYPES or any(word in lower for word in REFUSAL_WORDS):
            details = fault.body.get("moderation_details") or {}
            if not details and isinstance(fault.body.get("error"), dict):
                details = fault.body["error"].get("moderation_details") or {}
            extra = []
            if details.get("moderation_stage"):
                extra.append(f"stage: {details['moderation_stage']}")
            if details.get("categories"):
                extra.append(f"categories: {', '.join(map(str, details['categories']))}")
            return f"edit-refused: {message}" + (f" [{'; '.join(extra)}]" if extra else "")
        if fault.param in RECIPE_PARAMS:
            raise EndpointConfigError(f"the server at {self.settings.endpoint()} refused openai.{fault.param}: {message}")
        return f"edit-bad-request: {message}"

    def _cost(self, images: int, usage: dict[str, float]) -> float:
        s = self.settings
        if s.price_per_image is not None:
            return images * s.price_per_image
        if s.price_in_per_million is None and s.price_out_per_million is None:
            return 0.0
        return (usage.get("tokens_in", 0) * (s.price_in_per_million or 0) + usage.get("tokens_out", 0) * (s.price_out_per_million or 0)) / 1e6


# --- helpers ------------------------------------------------------------------------------


def pixels_hash(image: np.ndarray) -> str:
    """Hash of the pixels themselves (shape and bytes): a Pillow that encodes PNGs differently keeps the cache."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.dtype}|{array.shape}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless upload; zlib level 1: a 1 MP photo encodes ~3x faster than at Pillow's default, ~10% larger."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _b64_image(response: Any) -> str:
    data = getattr(response, "data", None)
    if not data:
        raise _Malformed("the answer has no data")
    item = data[0]
    if not getattr(item, "b64_json", None):
        raise _Malformed("the answer has no b64_json" + (" (a URL instead: set openai.response_format b64_json)" if getattr(item, "url", None) else ""))
    return str(item.b64_json)


def _decode(encoded: str) -> np.ndarray:
    from crispedit.core.images import ImageRejected, decode_image

    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed("b64_json is not base64") from None
    try:
        pixels, _ = decode_image(raw)
    except ImageRejected as rejected:
        raise _Malformed(f"b64_json is not an image ({rejected})") from None
    return pixels


def _token_usage(response: Any) -> dict[str, float]:
    usage = getattr(response, "usage", None)
    if usage is None:
        return {}
    return {"tokens_in": getattr(usage, "input_tokens", 0) or 0, "tokens_out": getattr(usage, "output_tokens", 0) or 0}


def _from_record(record: dict[str, Any]) -> EditAnswer | None:
    usage: dict[str, float] = {"cached": 1}
    if record.get("b64"):
        try:
            image = _decode(record["b64"])
        except _Malformed:
            return None  # a damaged cache file: ask again
        return EditAnswer(image=image, error=None, usage={**usage, "images": 1})
    if record.get("error"):
        return EditAnswer(image=None, error=record["error"], usage=usage)
    return None
