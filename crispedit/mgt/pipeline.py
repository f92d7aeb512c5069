"""Image + instruction (+ task) -> edited image, from a training checkpoint or the released layout.

A crispedit checkpoint (or output dir) rebuilds its components from its config.yaml (tiny
twins included) and loads the transformer (EMA weights when present, LoRA merged). A
released EditMGT directory (released.py) points every component at its subfolder. Either
way the source is cropped, VQ-encoded, sampled with MaskGIT and decoded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import resolve_checkpoint
from .components import build_text, build_transformer_from_config, build_vq, load_trained_transformer
from .config import MGTConfig, apply_overrides
from .data import crop_pair, to_unit
from .released import is_released_layout, released_config
from .sampler import maskgit_sample
from .text import TextConditioner
from .tokenizer import VQTokenizer
from .transformer import EditMGTTransformer

log = logging.getLogger(__name__)


def load_editor_config(path: str | Path, overrides: list[str] | None = None) -> tuple[MGTConfig, Path, bool]:
    """(config, resolved path, is the released layout) of a checkpoint, output dir or released dir."""
    path = Path(path)
    if is_released_layout(path):
        cfg, resolved, released = released_config(path), path, True
    else:
        resolved = resolve_checkpoint(path)
        cfg, released = MGTConfig.load(resolved / "config.yaml"), False
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg, resolved, released


@dataclass
class EditPipeline:
    cfg: MGTConfig
    transformer: EditMGTTransformer
    vq: VQTokenizer
    text: TextConditioner
    device: torch.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True,
                        dtype: torch.dtype = torch.float32, overrides: list[str] | None = None) -> EditPipeline:
        cfg, resolved, released = load_editor_config(path, overrides)
        if released:
            model = build_transformer_from_config(cfg.model)
        else:
            t = cfg.train
            lora = (t.lora_rank, t.lora_alpha, tuple(t.lora_targets)) if t.lora_rank > 0 else None
            model = load_trained_transformer(resolved, cfg.model, lora, use_ema)
        device = torch.device(device)
        vq = build_vq(cfg.model)
        vq.vq.to(device)
        # ModelMixin.to(dtype) warns even for float32; cast only when the dtype changes.
        model = model.to(device) if dtype == torch.float32 else model.to(device, dtype)
        return cls(cfg, model.eval().requires_grad_(False), vq, build_text(cfg.model).to(device), device)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.cfg.model.tasks) if self.cfg.model.task_embeddings else ()

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = image.convert("RGB")
        src, _, micro = crop_pair(rgb, rgb, self.cfg.model.resolution, rng=None)
        return to_unit(src[None]), torch.tensor([micro])

    @torch.no_grad()
    def __call__(self, image: Image.Image, instruction: str, steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, tau: float | None = None, keywords: list[str] | None = None,
                 reference_strength: float | None = None, task: str | None = None) -> Image.Image:
        s = self.cfg.sample
        source, micro = self.preprocess(image)
        ref_ids = self.vq.encode(source.to(self.device))
        cond = self.text.encode([instruction])
        uncond = self.text.empty(s.negative_prompt)
        tau = s.tau if tau is None else tau
        task_ids = None
        if self.tasks:
            if task is None:
                log.warning("this model has task vectors (%s) but no task was given: editing without one",
                            ", ".join(self.tasks))
            task_ids = torch.tensor([self.cfg.model.task_id(task)], device=self.device)
        elif task is not None:
            raise ValueError(f"--task {task!r}: this model was trained without task embeddings")
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
            masking_schedule=s.masking_schedule,
            task_ids=task_ids,
        )
        out = self.vq.decode(ids)[0].permute(1, 2, 0).cpu().numpy()
        return Image.fromarray((out * 255).round().astype(np.uint8))
