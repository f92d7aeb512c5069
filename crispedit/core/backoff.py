"""How long to wait before asking a server again: its ``Retry-After``, else exponential backoff.

The LLM client and the Hub upload both meet 429 and 503 answers. A server may say when
to come back in any of the forms seen in the wild: ``retry-after-ms`` (OpenAI), delay
seconds, an HTTP date, or something unreadable. Whatever the header holds, the answer is
a wait: an unreadable or absent header means the caller's own backoff, never an error
(a parse failure must not turn a rate limit into a rejected sample or a failed upload).
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import time
from collections.abc import Mapping
from typing import Any

#: The longest wait a server's header may impose; beyond it the header is taken to be wrong.
MAX_RETRY_AFTER = 3600.0

_SECONDS = re.compile(r"\s*(\d+(?:\.\d+)?)\s*")


def _header(headers: Mapping[str, Any] | Any, name: str) -> str | None:
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    value = getter(name)
    if value is None:
        value = getter(name.title())
    if value is None and isinstance(headers, Mapping):
        value = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == name), None)
    return None if value is None else str(value)


def retry_after(headers: Mapping[str, Any] | Any, now: float | None = None) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date), at most
    :data:`MAX_RETRY_AFTER`; None when there is no readable header, so the caller backs off on its own."""
    millis = _header(headers, "retry-after-ms")
    if millis is not None and (match := _SECONDS.fullmatch(millis)):
        return min(MAX_RETRY_AFTER, float(match.group(1)) / 1000)
    value = _header(headers, "retry-after")
    if value is None:
        return None
    match = _SECONDS.fullmatch(value)
    if match:
        return min(MAX_RETRY_AFTER, float(match.group(1)))
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except Exception:  # any unreadable header (IndexError, TypeError, ValueError...) is "no header"
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        from datetime import timezone

        when = when.replace(tzinfo=timezone.utc)
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(MAX_RETRY_AFTER, max(0.0, seconds)) if math.isfinite(seconds) else None


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter: a random wait in [c/2, c], c = min(maximum, initial * 2**attempt)."""
    ceiling = min(maximum, initial * 2 ** min(attempt, 60))
    return random.uniform(ceiling / 2, ceiling)
