"""The paper's editing metrics on a benchmark Parquet file: L1, CLIP-I, DINO, CLIP-T.

For each row (source, instruction, target[, target_caption]) the checkpoint edits the
source, then, at the benchmark's resolution:
    L1      mean |edited - target| over pixels in [0, 1]        (lower is better)
    CLIP-I  cosine(CLIP image emb(edited), CLIP image emb(target))
    DINO    cosine(DINOv2 CLS(edited), DINOv2 CLS(target))
    CLIP-T  cosine(CLIP image emb(edited), CLIP text emb(target caption, else instruction))
as in MagicBrush/Emu Edit evaluations. The CLIP and DINOv2 ids default to the ones below and
are set with `crispedit eval --clip-model ... --dino-model ...`; a tiny config uses tiny twins.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from .data import (
    INSTRUCTION_COLUMNS,
    SOURCE_COLUMNS,
    TARGET_COLUMNS,
    decode_image,
    image_bytes,
)
from .pipeline import EditPipeline

EVAL_CLIP_ID = "openai/clip-vit-large-patch14"
EVAL_DINO_ID = "facebook/dinov2-base"
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class MetricModels:
    def __init__(self, tiny: bool, seed: int = 0, device: str | torch.device = "cpu",
                 clip_id: str = EVAL_CLIP_ID, dino_id: str = EVAL_DINO_ID) -> None:
        self.device = torch.device(device)
        if tiny:
            from .tiny import tiny_clip_model, tiny_clip_tokenizer, tiny_dino_model

            self.clip, self.clip_tok = tiny_clip_model(seed + 10), tiny_clip_tokenizer(77)
            self.dino = tiny_dino_model(seed + 11)
        else:
            from transformers import AutoModel, CLIPModel, CLIPTokenizer

            self.clip, self.clip_tok = CLIPModel.from_pretrained(clip_id), CLIPTokenizer.from_pretrained(clip_id)
            self.dino = AutoModel.from_pretrained(dino_id)
        self.clip.to(self.device).eval()
        self.dino.to(self.device).eval()

    @staticmethod
    def _pixels(img: Image.Image, size: int, mean, std) -> torch.Tensor:
        arr = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)
        return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]

    @torch.no_grad()
    def clip_image(self, img: Image.Image) -> torch.Tensor:
        size = self.clip.config.vision_config.image_size
        x = self._pixels(img, size, _CLIP_MEAN, _CLIP_STD).to(self.device)
        out = self.clip.get_image_features(pixel_values=x)
        out = out.pooler_output if hasattr(out, "pooler_output") else out
        return F.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def clip_text(self, text: str) -> torch.Tensor:
        ids = self.clip_tok([text], padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        out = self.clip.get_text_features(input_ids=ids.input_ids.to(self.device))
        out = out.pooler_output if hasattr(out, "pooler_output") else out
        return F.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def dino_image(self, img: Image.Image) -> torch.Tensor:
        size = self.dino.config.image_size if self.dino.config.image_size <= 64 else 224
        x = self._pixels(img, size, _IMAGENET_MEAN, _IMAGENET_STD).to(self.device)
        return F.normalize(self.dino(pixel_values=x).last_hidden_state[:, 0].float(), dim=-1)


def pair_metrics(edited: Image.Image, target: Image.Image, caption: str, models: MetricModels) -> dict[str, float]:
    target = target.convert("RGB").resize(edited.size, Image.BICUBIC)
    a = np.asarray(edited, dtype=np.float32) / 255.0
    b = np.asarray(target, dtype=np.float32) / 255.0
    e_clip = models.clip_image(edited)
    return {
        "l1": float(np.abs(a - b).mean()),
        "clip_i": float((e_clip * models.clip_image(target)).sum()),
        "dino": float((models.dino_image(edited) * models.dino_image(target)).sum()),
        "clip_t": float((e_clip * models.clip_text(caption)).sum()),
    }


def _column(names: list[str], candidates: tuple[str, ...]) -> str:
    for c in candidates:
        if c in names:
            return c
    raise ValueError(f"benchmark has none of the columns {candidates}")


def evaluate(checkpoint: str | Path, benchmark: str | Path, steps: int | None = None, seed: int = 0,
             limit: int | None = None, device: str = "cpu", clip_id: str = EVAL_CLIP_ID,
             dino_id: str = EVAL_DINO_ID) -> dict[str, object]:
    pipe = EditPipeline.from_checkpoint(checkpoint, device=device)
    models = MetricModels(tiny=pipe.cfg.is_tiny, seed=pipe.cfg.model.tiny_seed, device=device,
                          clip_id=clip_id, dino_id=dino_id)
    table = pq.read_table(benchmark)
    names = table.column_names
    c_instr, c_src, c_tgt = (_column(names, c) for c in (INSTRUCTION_COLUMNS, SOURCE_COLUMNS, TARGET_COLUMNS))
    c_cap = "target_caption" if "target_caption" in names else None
    rows = table.to_pylist()[:limit] if limit else table.to_pylist()
    per_row = []
    for i, row in enumerate(rows):
        source = decode_image(image_bytes(row[c_src]))
        target = decode_image(image_bytes(row[c_tgt]))
        edited = pipe(source, row[c_instr], steps=steps, seed=seed + i)
        caption = (row.get(c_cap) if c_cap else None) or row[c_instr]
        per_row.append({"id": row.get("id", str(i)), **pair_metrics(edited, target, caption, models)})
    keys = ("l1", "clip_i", "dino", "clip_t")
    summary = {k: float(np.mean([r[k] for r in per_row])) if per_row else float("nan") for k in keys}
    return {"checkpoint": str(checkpoint), "benchmark": str(benchmark), "n": len(per_row), "metrics": summary, "rows": per_row}


def write_report(report: dict[str, object], out: str | Path) -> None:
    Path(out).write_text(json.dumps(report, indent=2))
