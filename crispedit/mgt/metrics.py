"""The editing metrics of MagicBrush, Emu Edit and EditMGT: L1, CLIP-I, DINO, CLIP-T, CLIP-dir.

Scored with the build's own scorer (crispedit.models.clip.Embedder): the same CLIP and DINOv2
classes, preprocessing (the checkpoints' processor numbers) and, for tiny checkpoints, the
same tiny twins as the ``clip_filter`` stage, so a pair gets the same score when it is built
and when a model trained on it is evaluated (tests/mgt/test_eval.py checks it on a build).

For an edited image E, its source S, a reference target T (when the benchmark has one), the
instruction and the captions:
    l1, clip_i, dino            E against T   (MagicBrush, crispedit shards)
    l1_source, clip_i_source,
    dino_source                 E against S   (Emu Edit: how much of the source survived)
    clip_t                      CLIP(E) . CLIP(output caption)       (Emu Edit "CLIP-out")
    clip_dir                    InstructPix2Pix's directional similarity of (S, E) with the captions,
                                as the build's ``clip_dir``          (Emu Edit "CLIP-dir")
A metric whose inputs are missing is None (null in the Parquet), never a stand-in value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from crispedit.core.images import pixel_l1
from crispedit.models.clip import CLIP_ID, DINO_ID, Embedder, as_array, directional_similarity
from crispedit.models.spec import TINY_ID, ModelSpec

EVAL_CLIP_ID = CLIP_ID
EVAL_DINO_ID = DINO_ID


class MetricModels:
    """CLIP and DINOv2 as the build scores with them; tiny checkpoints get the build's tiny twins.

    ``seed`` seeds the tiny twins as a recipe's ``seed`` seeds a ``--tiny`` build's (the
    recipes use 0), so a tiny build's scores can be compared with a tiny eval's.
    """

    def __init__(self, tiny: bool, seed: int = 0, device: str | Any = "cpu",
                 clip_id: str = EVAL_CLIP_ID, dino_id: str = EVAL_DINO_ID) -> None:
        clip = ModelSpec(id=TINY_ID if tiny else clip_id)
        dino = ModelSpec(id=TINY_ID if tiny else dino_id)
        self.embedder = Embedder(clip, dino, device=str(device), seed=seed)


def l1_distance(a: Image.Image, b: Image.Image) -> float:
    """Mean |a - b| over RGB on [0, 1] (the build's ``pixel_l1``); b is resized to a's size first."""
    b = b.convert("RGB").resize(a.size, Image.BICUBIC) if b.size != a.size else b.convert("RGB")
    return pixel_l1(np.asarray(a.convert("RGB")), np.asarray(b))


def edit_metrics(models: MetricModels, edited: Image.Image, source: Image.Image, target: Image.Image | None,
                 input_caption: str | None, output_caption: str | None) -> dict[str, float | None]:
    """Every metric of the module docstring that the inputs allow."""
    embedder = models.embedder
    images = [as_array(i) for i in [edited, source] + ([target] if target is not None else [])]
    clip = embedder.clip_image(images)
    dino = embedder.dino_image(images)
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
        texts = embedder.clip_text([output_caption] + ([input_caption] if input_caption else []))
        out["clip_t"] = float(clip[0] @ texts[0])
        if input_caption:
            out["clip_dir"] = directional_similarity(clip[1], clip[0], texts[1], texts[0])
    return out
