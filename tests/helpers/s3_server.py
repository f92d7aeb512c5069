"""A real S3 endpoint for tests: moto's server mode on 127.0.0.1, reached through s3fs over HTTP.

Import the ``s3`` fixture into a test module (``from tests.helpers.s3_server import s3``). Credentials are
fake values put in the environment, the way real ones reach s3fs; the endpoint reaches
in-process code as ``storage_options`` and subprocesses (CLI builds, Ray workers) through
``FSSPEC_S3_ENDPOINT_URL``, which fsspec reads at import.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3:
    endpoint: str
    bucket: str

    @property
    def storage_options(self) -> dict[str, Any]:
        """What fsspec/s3fs/datasets need to reach this endpoint; credentials come from the environment."""
        return {"endpoint_url": self.endpoint}

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess that must reach this endpoint with no options passed."""
        return {**os.environ, **FAKE_CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": self.endpoint}

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, use_listings_cache=False)

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def new_prefix(self) -> str:
        """A fresh s3:// prefix, so tests sharing the server never see each other's objects."""
        return self.url(uuid.uuid4().hex[:12])


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    store = S3(endpoint=f"http://{host}:{port}", bucket="crispedit-test")
    try:
        # moto keeps its state per process, so a second module's server may already have the bucket.
        store.fs().makedirs(store.bucket, exist_ok=True)
        yield store
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
