"""The SDXL tests' shared setting: one torch thread (two shared cores: one intra-op thread is several
times faster than two contending ones)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
