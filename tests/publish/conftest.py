"""The local Hub fixture the publish tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.hub_server import FakeHub

TOKEN = "hf_test_secret_never_printed"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The local Hub, with huggingface_hub pointed at it: endpoint, token from HF_TOKEN, LFS transfers."""
    import huggingface_hub.constants as constants
    from huggingface_hub.utils import disable_progress_bars

    server = FakeHub(TOKEN).start()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)  # read from HF_ENDPOINT at import time
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # no Xet CAS here: the client uses LFS basic transfer
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login-cache"))
    disable_progress_bars()
    yield server
    server.stop()
