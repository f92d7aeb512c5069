"""The openai client's HTTP client: request bodies in one write, the proxy environment still honoured."""

from __future__ import annotations

import asyncio

import pytest

from crispedit.models.endpoint import one_write_http_client

FIELDS = {"model": "m", "prompt": "make it red", "size": "auto", "quality": "auto"}
FILES = {"image": ("image.png", b"\x89PNG" + bytes(range(256)) * 40, "image/png")}


async def _chunks(stream) -> list[bytes]:
    return [chunk async for chunk in stream]


def test_a_multipart_body_is_joined_before_it_is_sent() -> None:
    client = one_write_http_client()
    plain = client.build_request("POST", "http://127.0.0.1:9/v1/images/edits", data=FIELDS, files=FILES)
    assert len(asyncio.run(_chunks(plain.stream))) > 5  # as httpx streams it: parts, headers, values

    request = client.build_request("POST", "http://127.0.0.1:9/v1/images/edits", data=FIELDS, files=FILES)

    async def after_hooks() -> list[bytes]:
        for hook in client.event_hooks["request"]:
            await hook(request)
        return await _chunks(request.stream)

    chunks = asyncio.run(after_hooks())
    assert len(chunks) == 1 and b'name="prompt"' in chunks[0] and chunks[0].count(b"make it red") == 1
    assert request.headers["content-length"] == str(len(chunks[0]))
    asyncio.run(client.aclose())


def test_the_proxy_environment_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transport of our own would make httpx ignore HTTPS_PROXY; the request hook keeps the default mounts."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    client = one_write_http_client()
    proxies = {pattern.pattern: getattr(transport._pool, "_proxy_url", None) for pattern, transport in client._mounts.items() if transport}
    assert proxies["https://"] is not None and proxies["https://"].port == 3128
    asyncio.run(client.aclose())
