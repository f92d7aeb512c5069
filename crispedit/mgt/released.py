"""The released EditMGT checkpoint layout, read from a local directory.

Upstream's `init_edit_mgt` (EditMGT src/editmgt.py) loads one hub repo with these subfolders:

    editmgt/       the transformer (config.json + diffusion_pytorch_model*.safetensors);
                   `transformer/` holds Meissonic's text-to-image weights in the same format
    vqvae/         diffusers VQModel
    text_encoder/  CLIPTextModelWithProjection      tokenizer/  its CLIPTokenizer
    llm_encoder/   Gemma-2-2B-IT model and tokenizer
    scheduler/     scheduler_config.json: mask_token_id, masking_schedule

`released_config` turns such a directory into an MGTConfig that points every component at
its subfolder, so `crispedit edit` and `crispedit eval` use it like a training checkpoint.
Sampling follows upstream inference (`timestep_mode: step_index`); training from it follows
upstream training (`train.timestep_mode: ratio_x1000`), see docs/trainer.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ComponentConfig, MGTConfig, ModelConfig, SampleConfig, TrainConfig, TransformerConfig

TRANSFORMER_FOLDERS = ("editmgt", "transformer")
# Upstream's micro-conditioning width is a constant in its forward (not in config.json).
UPSTREAM_MICRO_COND_DIM = 256


def _transformer_dir(path: Path) -> Path | None:
    return next((path / f for f in TRANSFORMER_FOLDERS if (path / f / "config.json").exists()), None)


def is_released_layout(path: str | Path) -> bool:
    path = Path(path)
    return (path / "scheduler" / "scheduler_config.json").exists() and _transformer_dir(path) is not None


def released_config(path: str | Path) -> MGTConfig:
    path = Path(path).resolve()
    tdir = _transformer_dir(path)
    if tdir is None or not (path / "scheduler" / "scheduler_config.json").exists():
        raise FileNotFoundError(f"{path}: not a released EditMGT layout (needs scheduler/ and editmgt/ or transformer/)")
    t = json.loads((tdir / "config.json").read_text())
    if t.get("guidance_embeds"):
        raise ValueError(f"{tdir}/config.json: guidance_embeds is true; EditMGT has none")
    if t.get("patch_size", 1) != 1:
        raise ValueError(f"{tdir}/config.json: patch_size {t['patch_size']} (EditMGT uses 1)")
    transformer = TransformerConfig(
        num_layers=int(t["num_layers"]), num_single_layers=int(t["num_single_layers"]),
        attention_head_dim=int(t["attention_head_dim"]), num_attention_heads=int(t["num_attention_heads"]),
        joint_attention_dim=int(t["joint_attention_dim"]), pooled_projection_dim=int(t["pooled_projection_dim"]),
        axes_dims_rope=tuple(int(a) for a in t["axes_dims_rope"]), vocab_size=int(t["vocab_size"]),
        codebook_size=int(t["codebook_size"]), downsample=bool(t["downsample"]), upsample=bool(t["upsample"]),
        connector_type=str(t.get("connector_type") or "none"), micro_cond_encode_dim=UPSTREAM_MICRO_COND_DIM,
    )
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    mask_id = scheduler.get("mask_token_id")
    if mask_id is not None and int(mask_id) != transformer.mask_token_id:
        raise ValueError(f"{path}/scheduler: mask_token_id {mask_id} is not vocab_size - 1 = {transformer.mask_token_id}")
    llm = (ComponentConfig(id=str(path), subfolder="llm_encoder") if (path / "llm_encoder").is_dir()
           else ComponentConfig(id="google/gemma-2-2b-it"))
    model = ModelConfig(
        transformer=transformer,
        vq=ComponentConfig(id=str(path), subfolder="vqvae"),
        clip=ComponentConfig(id=str(path), subfolder="text_encoder", tokenizer_subfolder="tokenizer"),
        llm=llm,
        init_transformer=ComponentConfig(id=str(tdir)),
    )
    sample = SampleConfig(timestep_mode="step_index", masking_schedule=scheduler.get("masking_schedule", "cosine"))
    train = TrainConfig(timestep_mode="ratio_x1000")
    return MGTConfig(model=model, train=train, sample=sample, name=f"editmgt-released:{path.name}")
