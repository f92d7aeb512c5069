"""diffusers' StableDiffusionSafetyChecker as a score: the margin above its concept thresholds, kept.

Loaded by id and revision (``safety-checker`` is its tiny twin); the images are preprocessed
by :class:`crispedit.models.clip.Preprocess`, like every CLIP model here.
"""

from __future__ import annotations

from typing import Any

from crispedit.models.clip import _CLIP_MEAN, _CLIP_STD, TINY_IMAGE, Preprocess
from crispedit.models.loading import load_model
from crispedit.models.spec import ModelSpec, register_twin
from crispedit.models.twins import seeded

SAFETY_ID = "CompVis/stable-diffusion-safety-checker"


def tiny_safety_checker(seed: int) -> tuple[Any, Preprocess]:
    """diffusers' StableDiffusionSafetyChecker from a tiny CLIPConfig; concept thresholds stay at their init (1.0)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig


    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=TINY_IMAGE, patch_size=8)
    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with seeded(seed):
        model = StableDiffusionSafetyChecker(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).double().eval()
    return model, Preprocess(TINY_IMAGE, (TINY_IMAGE, TINY_IMAGE), _CLIP_MEAN, _CLIP_STD)


register_twin("safety-checker")(tiny_safety_checker)


def load_safety_checker(spec: ModelSpec, seed: int = 0) -> tuple[Any, Preprocess]:
    """(StableDiffusionSafetyChecker, preprocessing of its CLIP feature extractor)."""

    def load(model_id: str, **kwargs: Any) -> tuple[Any, Preprocess]:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import AutoImageProcessor

        model = StableDiffusionSafetyChecker.from_pretrained(model_id, **kwargs).eval()
        try:
            processor = AutoImageProcessor.from_pretrained(model_id, **kwargs)
            return model, Preprocess.from_processor(processor)
        except OSError:  # the checker repo ships no processor config: CLIP ViT-L/14's numbers
            side = int(model.config.vision_config.image_size)
            return model, Preprocess(side, (side, side), _CLIP_MEAN, _CLIP_STD)

    return load_model(spec, "safety-checker", load, seed)


def safety_scores(checker: Any, pixels: Any) -> list[float]:
    """max over concepts of (cosine - concept threshold), with the checker's special-care adjustment.

    diffusers' StableDiffusionSafetyChecker flags an image when this is above 0 but returns
    only the flag; the margin is kept as the score, so a stricter (or looser) cut-off can be
    chosen later without running the model again.
    """
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        pooled = checker.vision_model(pixels.to(checker.dtype))[1]
        embeds = F.normalize(checker.visual_projection(pooled).double(), dim=-1)
        special = embeds @ F.normalize(checker.special_care_embeds.double(), dim=-1).T - checker.special_care_embeds_weights.double()
        concept = embeds @ F.normalize(checker.concept_embeds.double(), dim=-1).T - checker.concept_embeds_weights.double()
        adjust = (special > 0).any(dim=1, keepdim=True).float() * 0.01
        worst = (concept + adjust).max(dim=1).values
    return [float(v) for v in worst.cpu()]
