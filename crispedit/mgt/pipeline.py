"""Image + instruction -> edited image, from a training checkpoint (or output dir).

Rebuilds the components from the checkpoint's config.yaml (tiny twins included), loads the
transformer weights (EMA weights when present), encodes the source with the VQ tokenizer,
runs the MaskGIT sampler and decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import latest_checkpoint
from .components import (
    build_text,
    build_transformer_from_config,
    build_vq,
    load_safetensors_weights,
)
from .config import MGTConfig
from .data import crop_pair
from .sampler import maskgit_sample


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training output dir (its latest checkpoint)."""
    path = Path(path)
    if (path / "config.yaml").exists() and (path / "model.safetensors").exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: not a checkpoint (model.safetensors + config.yaml) nor an output dir with checkpoints/")
    return latest


@dataclass
class EditPipeline:
    cfg: MGTConfig
    transformer: torch.nn.Module
    vq: object
    text: object
    device: torch.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True,
                        dtype: torch.dtype = torch.float32) -> EditPipeline:
        ckpt = resolve_checkpoint(path)
        cfg = MGTConfig.load(ckpt / "config.yaml")
        model = build_transformer_from_config(cfg.model, init=None)
        state = load_safetensors_weights(ckpt / "model.safetensors")
        if cfg.train.lora_rank > 0:
            from .lora import apply_lora, merge_lora

            apply_lora(model, cfg.train.lora_rank, cfg.train.lora_alpha, tuple(cfg.train.lora_targets))
            model.load_state_dict(state, strict=True)
            if use_ema and (ckpt / "ema.safetensors").exists():
                model.load_state_dict(load_safetensors_weights(ckpt / "ema.safetensors"), strict=False)
            merge_lora(model)
        else:
            model.load_state_dict(state, strict=True)
            if use_ema and (ckpt / "ema.safetensors").exists():
                model.load_state_dict(load_safetensors_weights(ckpt / "ema.safetensors"), strict=True)
        device = torch.device(device)
        vq = build_vq(cfg.model)
        vq.vq.to(device)
        # ModelMixin.to(dtype) warns even for float32; cast only when the dtype changes.
        model = model.to(device) if dtype == torch.float32 else model.to(device, dtype)
        return cls(cfg, model.eval(), vq, build_text(cfg.model).to(device), device)

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        src, _, micro = crop_pair(image.convert("RGB"), image.convert("RGB"), self.cfg.model.resolution, rng=None)
        return src[None], torch.tensor([micro])

    @torch.no_grad()
    def __call__(self, image: Image.Image, instruction: str, steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, tau: float | None = None, keywords: list[str] | None = None,
                 reference_strength: float | None = None) -> Image.Image:
        s = self.cfg.sample
        source, micro = self.preprocess(image)
        ref_ids = self.vq.encode(source.to(self.device))
        cond = self.text.encode([instruction])
        uncond = self.text.empty(s.negative_prompt)
        tau = s.tau if tau is None else tau
        generator = torch.Generator(device=self.device).manual_seed(seed)
        ids = maskgit_sample(
            self.transformer, ref_ids, cond, uncond, micro.to(self.device),
            steps=steps or s.steps,
            guidance_scale=s.guidance_scale if guidance_scale is None else guidance_scale,
            generator=generator,
            reference_strength=s.reference_strength if reference_strength is None else reference_strength,
            tau=tau if tau > 0 else None,
            capture_blocks=tuple(s.capture_blocks),
            keyword_rows=self.text.keyword_rows([instruction], [keywords or []]),
            temperature=tuple(s.temperature),
            timestep_mode=s.timestep_mode,
        )
        out = self.vq.decode(ids)[0].permute(1, 2, 0).cpu().numpy()
        return Image.fromarray((out * 255).round().astype(np.uint8))
