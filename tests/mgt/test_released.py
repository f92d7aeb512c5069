"""The released EditMGT checkpoint layout, from a local directory: a tiny random-init model
saved by the test in upstream's layout (editmgt/, vqvae/, text_encoder/, tokenizer/,
llm_encoder/, scheduler/), used by `crispedit edit` and `crispedit eval`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from crispedit.core.presets import BUNDLED
from crispedit.mgt import cli
from crispedit.mgt.config import MGTConfig
from crispedit.mgt.pipeline import EditPipeline
from crispedit.mgt.released import is_released_layout, released_config
from crispedit.mgt.tiny import (
    tiny_clip_text_model,
    tiny_clip_tokenizer,
    tiny_llm,
    tiny_llm_tokenizer,
    tiny_vq,
)
from crispedit.mgt.transformer import build_transformer
from tests.mgt.conftest import IMAGE_TYPE, draw_photo, image_struct

SMALL = ["--set", "model.resolution=16", "--set", "model.text_max_length=8"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    cfg = MGTConfig.load(BUNDLED / "mgt" / "tiny.yaml")
    t = cfg.model.transformer
    root = tmp_path_factory.mktemp("EditMGT")
    (root / "editmgt").mkdir()
    # upstream's Transformer2DModel config keys (EditMGT src/transformer.py), not crispedit's
    (root / "editmgt" / "config.json").write_text(json.dumps({
        "_class_name": "Transformer2DModel", "patch_size": 1, "in_channels": 64, "num_layers": t.num_layers,
        "num_single_layers": t.num_single_layers, "attention_head_dim": t.attention_head_dim,
        "num_attention_heads": t.num_attention_heads, "joint_attention_dim": t.joint_attention_dim,
        "pooled_projection_dim": t.pooled_projection_dim, "guidance_embeds": False,
        "axes_dims_rope": list(t.axes_dims_rope), "vocab_size": t.vocab_size, "codebook_size": t.codebook_size,
        "downsample": True, "upsample": True, "text_encoder_architecture": "CLIP_Gemma2", "connector_type": "linear",
    }))
    # upstream forward fixes the micro-conditioning width at 256
    t.micro_cond_encode_dim = 256
    torch.manual_seed(3)
    weights = {k: v.contiguous() for k, v in build_transformer(t).state_dict().items()}
    save_file(weights, str(root / "editmgt" / "diffusion_pytorch_model.safetensors"))
    tiny_vq(t.codebook_size, 1).save_pretrained(root / "vqvae")
    tiny_clip_text_model(t.pooled_projection_dim, 2, 77).save_pretrained(root / "text_encoder")
    tiny_clip_tokenizer(77).save_pretrained(root / "tokenizer")
    tiny_llm(t.joint_attention_dim, 3).save_pretrained(root / "llm_encoder")
    tiny_llm_tokenizer(8).save_pretrained(root / "llm_encoder")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "Scheduler", "mask_token_id": t.vocab_size - 1, "masking_schedule": "cosine"}))
    return root, weights


def _run(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_released_layout_is_read_with_upstream_conventions(released):
    root, weights = released
    assert is_released_layout(root)
    cfg = released_config(root)
    assert cfg.sample.timestep_mode == "step_index" and cfg.train.timestep_mode == "ratio_x1000"
    assert cfg.model.transformer.micro_cond_encode_dim == 256 and cfg.model.init_transformer.id.endswith("editmgt")
    pipe = EditPipeline.from_checkpoint(root, overrides=SMALL[1::2])
    state = pipe.transformer.state_dict()
    assert set(state) == set(weights) and all(torch.equal(state[k], weights[k]) for k in weights)


@pytest.mark.slow
def test_edit_and_eval_accept_the_released_layout(released, tmp_path):
    root, _ = released
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(img)
    assert _run(["edit", "--checkpoint", str(root), "--image", str(img), "--instruction", "make it gray",
                 "--out", str(tmp_path / "out.png"), "--steps", "3", *SMALL]) == 0
    assert Image.open(tmp_path / "out.png").size == (16, 16)

    # metric models given as local folders, as a user without hub access would
    clip_dir, dino_dir = tmp_path / "clip", tmp_path / "dino"
    from crispedit.models.clip import tiny_clip, tiny_dino

    clip_model, clip_tokenizer, _ = tiny_clip(10)
    clip_model.save_pretrained(clip_dir)
    clip_tokenizer.save_pretrained(clip_dir)
    from transformers import BitImageProcessor, CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip_dir)
    tiny_dino(11)[0].save_pretrained(dino_dir)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(dino_dir)
    bench = tmp_path / "bench.parquet"
    rng = np.random.default_rng(0)
    photos = [draw_photo(rng, 16, 16).astype(np.uint8) for _ in range(2)]
    pq.write_table(pa.table({"source_img": pa.array([image_struct(photos[0])], type=IMAGE_TYPE),
                             "target_img": pa.array([image_struct(photos[1])], type=IMAGE_TYPE),
                             "instruction": ["make it gray"], "img_id": ["1"], "turn_index": [1]}), bench)
    assert _run(["eval", "--checkpoint", str(root), "--benchmark", str(bench), "--out-dir", str(tmp_path / "ev"),
                 "--steps", "2", "--clip-model", str(clip_dir), "--dino-model", str(dino_dir), *SMALL]) == 0
    row = pq.read_table(tmp_path / "ev" / "samples.parquet").to_pylist()[0]
    assert row["id"] == "1-1" and 0 < row["l1"] < 1 and row["clip_i"] is not None
