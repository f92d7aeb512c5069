"""The IP-Adapter's image encoder comes from the pinned revision, through diffusers' own loader.

A Hugging Face cache is laid out by hand (``models--h94--IP-Adapter/snapshots/<commit>/...``) holding
two commits with different encoders. diffusers' ``load_ip_adapter`` alone fetches the encoder without
the revision: with ``refs/main`` on the other commit it would attach main's encoder, and with no
``refs/main`` (an offline cache holding only the pin) it fails. ``attach_ip_adapter`` must attach the
pin's encoder in both cases.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from crispedit.models.spec import ModelSpec
from crispedit.sdxl.models import attach_ip_adapter, tiny_sdxl_components, write_tiny_ip_adapter
from crispedit.sdxl.options import RunOptions

PIN = "1" * 40
MAIN = "2" * 40
WEIGHT = "sdxl_models/ip-adapter_sdxl.safetensors"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """A hub cache with the pin and main, different encoders; offline, so nothing is asked of a network."""
    import huggingface_hub.constants as hub_constants

    repo = tmp_path / "models--h94--IP-Adapter"
    for commit, seed in ((PIN, 1), (MAIN, 2)):
        write_tiny_ip_adapter(repo / "snapshots" / commit, seed)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return repo


def _pipeline():
    import diffusers

    from crispedit.sdxl.models import prepare

    return prepare(diffusers.StableDiffusionXLPipeline(**tiny_sdxl_components(0), add_watermarker=False), RunOptions(device="cpu"))


def _encoder_weights(folder):
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection.from_pretrained(str(folder / "sdxl_models" / "image_encoder")).state_dict()


@pytest.mark.parametrize("main_ref", [True, False], ids=["refs-main-elsewhere", "pin-only-cache"])
def test_encoder_is_the_pinned_revisions(offline_cache, main_ref):
    if main_ref:
        (offline_cache / "refs").mkdir()
        (offline_cache / "refs" / "main").write_text(MAIN)
    else:
        shutil.rmtree(offline_cache / "snapshots" / MAIN)
    pipe = _pipeline()
    attach_ip_adapter(pipe, ModelSpec(id="h94/IP-Adapter", revision=PIN), WEIGHT, seed=0)
    expected = _encoder_weights(offline_cache / "snapshots" / PIN)
    other = write_tiny_ip_adapter(offline_cache.parent / "other", 2)
    attached = pipe.image_encoder.state_dict()
    assert set(attached) == set(expected)
    assert all(torch.equal(attached[k], expected[k]) for k in expected)
    assert not all(torch.equal(attached[k], v) for k, v in _encoder_weights(other).items())  # the two commits differ
    assert pipe.unet.encoder_hid_proj is not None  # the adapter itself was attached after the encoder
