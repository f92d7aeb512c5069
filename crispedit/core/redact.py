"""The one scrubber for credentials: whatever crispedit writes or logs passes through here.

Keys belong in environment variables (a recipe names the variable, ``api_key_env``), but a
URL can carry them too: ``http://user:password@host/v1``, ``?api_key=...``, a signed
``X-Amz-Signature=...`` link. Such a URL is legal where a recipe or a data file names an
endpoint or a file, so it reaches the client that needs it, and nothing else: manifests,
the recipe copy, every stage's provenance, reject reasons, preview data, the dataset card,
logs at any verbosity and cache keys all hold the scrubbed form, where the userinfo and
every query or fragment parameter whose name says key, token, secret, password,
signature or credential read ``***``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "***"

#: A URL inside free text: a scheme, ``://``, then anything up to white space or a quote.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`\\]+")
#: URL query and fragment parameter names that carry a credential (anywhere in the lower-cased name).
_PARAM_WORDS = ("key", "token", "secret", "passw", "pwd", "auth", "sig", "credential", "session", "jwt", "bearer", "cookie")
#: Words that make a mapping key (YAML, JSON, parameters) a credential's, where names like
#: ``max_tokens`` or ``caption_key`` are ordinary: the whole key, or its last ``_`` part.
_KEY_WORDS = ("secret", "password", "passwd", "credential", "apikey", "api_key", "access_key", "secret_key", "private_key")
_KEY_ENDINGS = ("token", "secret", "password", "passwd", "credential", "credentials")
#: ``name: value`` / ``"name": "value"`` pairs of YAML or JSON text whose name may say it holds a secret.
_SECRET_PAIR = re.compile(
    r"""(?P<name>["']?(?P<key>[A-Za-z0-9_.\-]*(?:secret|passw|token|key|credential)[A-Za-z0-9_.\-]*)["']?\s*[:=][ \t]*)"""
    r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s,}\]#&?]+)""",
    re.IGNORECASE,
)


def secret_name(name: str) -> bool:
    """Whether a URL parameter's name says it carries a credential."""
    lower = name.lower()
    return any(word in lower for word in _PARAM_WORDS)


def secret_key(name: str) -> bool:
    """Whether a mapping key names a credential (``api_key``, ``aws_secret``, fsspec's ``key``; not ``api_key_env``,
    ``max_tokens`` or ``caption_key``)."""
    lower = name.lower().replace("-", "_")
    if lower.endswith("_env"):
        return False
    return lower == "key" or any(word in lower for word in _KEY_WORDS) or lower.rsplit("_", 1)[-1] in _KEY_ENDINGS


def scrub_url(url: str) -> str:
    """``url`` with its userinfo and its credential-carrying query and fragment parameters replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rsplit('@', 1)[1]}"
    tail = re.sub(r"([?&#;])([^=&#;]*)=([^&#;]*)", _param, tail)
    return f"{scheme}://{authority}{tail}"


def _param(match: re.Match[str]) -> str:
    lead, name, value = match.groups()
    return f"{lead}{name}={REDACTED}" if secret_name(name) and value else match.group(0)


def scrub_text(text: str) -> str:
    """Every URL in ``text`` scrubbed, and ``secret: value`` pairs of YAML or JSON text blanked."""
    if "://" in text:
        text = _URL.sub(_url, text)
    return _SECRET_PAIR.sub(_pair, text)


def _url(match: re.Match[str]) -> str:
    found = match.group(0)
    core = found.rstrip(",.;:!?)]}")  # the sentence's punctuation, not the URL's
    return scrub_url(core) + found[len(core):]


def _pair(match: re.Match[str]) -> str:
    name, value = match.group("name"), match.group("value")
    if not secret_key(match.group("key")) or value.strip("\"'") in ("", REDACTED, "null", "None"):
        return match.group(0)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{name}{quote}{REDACTED}{quote}"


def scrub_data(value: Any) -> Any:
    """A JSON-like structure with every string scrubbed and the values of secret-named keys blanked."""
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and secret_key(k) and isinstance(v, str) and v else scrub_data(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_data(v) for v in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value


class ScrubFilter(logging.Filter):
    """A handler filter: the formatted message of every record, whoever logged it (httpx logs URLs), is scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        return True


def install_log_scrubber() -> None:
    """Put :class:`ScrubFilter` on every handler of the root logger and on logging's last resort (idempotent)."""
    handlers = [*logging.getLogger().handlers, logging.lastResort]
    for handler in handlers:
        if handler is not None and not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
