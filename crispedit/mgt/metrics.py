"""The editing metrics of MagicBrush, Emu Edit and EditMGT: L1, CLIP-I, DINO, CLIP-T, CLIP-dir.

Images are preprocessed by the models' own image processors (resize the short side, centre
crop, normalise), as the benchmarks' evaluation scripts do through the same processors.
A tiny config uses tiny random-init twins with processors of the twins' input size.

For an edited image E, its source S, a reference target T (when the benchmark has one), the
instruction and the captions:
    l1, clip_i, dino            E against T   (MagicBrush, crispedit shards)
    l1_source, clip_i_source,
    dino_source                 E against S   (Emu Edit: how much of the source survived)
    clip_t                      CLIP(E) . CLIP(output caption)       (Emu Edit "CLIP-out")
    clip_dir                    (CLIP(E) - CLIP(S)) . (CLIP(output caption) - CLIP(input caption)),
                                both differences normalised         (Emu Edit "CLIP-dir")
A metric whose inputs are missing is None (null in the Parquet), never a stand-in value.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

EVAL_CLIP_ID = "openai/clip-vit-large-patch14"
EVAL_DINO_ID = "facebook/dinov2-base"
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _pil_processor(name: str):  # noqa: ANN202 - a transformers image processor class
    """transformers 5 names its PIL-only processors `...Pil`; without torchvision they are what runs."""
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


class MetricModels:
    def __init__(self, tiny: bool, seed: int = 0, device: str | torch.device = "cpu",
                 clip_id: str = EVAL_CLIP_ID, dino_id: str = EVAL_DINO_ID) -> None:
        self.device = torch.device(device)
        if tiny:
            from .tiny import tiny_clip_model, tiny_clip_tokenizer, tiny_dino_model

            self.clip, self.clip_tok = tiny_clip_model(seed + 10), tiny_clip_tokenizer(77)
            self.dino = tiny_dino_model(seed + 11)
            c, d = self.clip.config.vision_config.image_size, self.dino.config.image_size
            square = {"height": c, "width": c}
            self.clip_proc = _pil_processor("CLIPImageProcessor")(size={"shortest_edge": c}, crop_size=square)
            self.dino_proc = _pil_processor("BitImageProcessor")(
                size={"shortest_edge": d}, crop_size={"height": d, "width": d}, image_mean=_IMAGENET_MEAN,
                image_std=_IMAGENET_STD)
        else:
            from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPTokenizer

            self.clip, self.clip_tok = CLIPModel.from_pretrained(clip_id), CLIPTokenizer.from_pretrained(clip_id)
            self.clip_proc = AutoImageProcessor.from_pretrained(clip_id)
            self.dino = AutoModel.from_pretrained(dino_id)
            self.dino_proc = AutoImageProcessor.from_pretrained(dino_id)
        self.clip.to(self.device).eval()
        self.dino.to(self.device).eval()

    @staticmethod
    def _features(out: object) -> torch.Tensor:
        out = out.pooler_output if hasattr(out, "pooler_output") else out
        return F.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def clip_image(self, images: list[Image.Image]) -> torch.Tensor:
        x = self.clip_proc(images=[i.convert("RGB") for i in images], return_tensors="pt").pixel_values
        return self._features(self.clip.get_image_features(pixel_values=x.to(self.device)))

    @torch.no_grad()
    def clip_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.clip_tok(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        return self._features(self.clip.get_text_features(input_ids=ids.input_ids.to(self.device)))

    @torch.no_grad()
    def dino_image(self, images: list[Image.Image]) -> torch.Tensor:
        x = self.dino_proc(images=[i.convert("RGB") for i in images], return_tensors="pt").pixel_values
        return F.normalize(self.dino(pixel_values=x.to(self.device)).last_hidden_state[:, 0].float(), dim=-1)


def l1_distance(a: Image.Image, b: Image.Image) -> float:
    """Mean |a - b| over pixels in [0, 1]; b is resized to a's size first."""
    b = b.convert("RGB").resize(a.size, Image.BICUBIC) if b.size != a.size else b.convert("RGB")
    x = np.asarray(a.convert("RGB"), dtype=np.float32) / 255.0
    y = np.asarray(b, dtype=np.float32) / 255.0
    return float(np.abs(x - y).mean())


def edit_metrics(models: MetricModels, edited: Image.Image, source: Image.Image, target: Image.Image | None,
                 input_caption: str | None, output_caption: str | None) -> dict[str, float | None]:
    """Every metric of the module docstring that the inputs allow."""
    images = [edited, source] + ([target] if target is not None else [])
    clip = models.clip_image(images)
    dino = models.dino_image(images)
    out: dict[str, float | None] = {
        "l1": None, "clip_i": None, "dino": None,
        "l1_source": l1_distance(edited, source),
        "clip_i_source": float(clip[0] @ clip[1]),
        "dino_source": float(dino[0] @ dino[1]),
        "clip_t": None, "clip_dir": None,
    }
    if target is not None:
        out.update(l1=l1_distance(edited, target), clip_i=float(clip[0] @ clip[2]), dino=float(dino[0] @ dino[2]))
    if output_caption:
        texts = models.clip_text([output_caption] + ([input_caption] if input_caption else []))
        out["clip_t"] = float(clip[0] @ texts[0])
        if input_caption:
            image_dir = F.normalize(clip[0] - clip[1], dim=-1)
            text_dir = F.normalize(texts[0] - texts[1], dim=-1)
            out["clip_dir"] = float(image_dir @ text_dir)
    return out
