"""One batched scoring module: CLIP and DINOv2 embeddings, and the similarity scores built on them.

Shared by the filter stages (``clip_filter``, ``locality_filter``) and ``crispedit eval``
(crispedit.mgt.metrics), so a pair is scored the same way when it is built and when a model
trained on it is evaluated. What it guarantees:

* **the real classes**: transformers ``CLIPModel`` (+ its tokenizer) and ``AutoModel`` for
  DINOv2 (``Dinov2Model``, or ``Dinov2WithRegistersModel`` when the checkpoint is one), loaded
  by id and revision through :func:`crispedit.models.loading.load_model`; ``tiny`` gives random-init
  twins of the same classes, registered here as ``clip-scorer`` and ``dino-scorer``;
* **the models' own preprocessing**: resize of the short side, centre crop, mean and std are
  read from each checkpoint's image processor config, but applied with torch on the device,
  to whole groups of same-sized images at once (PIL round trips per image would cost more
  than a ViT-L forward on a GPU). ``tests/filters/test_filters.py`` checks it against the processor;
* **each embedding once**: images and texts are deduplicated within a batch (children of one
  item share their source array, captions repeat), embedded once, and every score reuses them.

Embeddings are L2-normalised float64 rows (whatever the model's dtype), so a dot product is a cosine similarity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from crispedit.models.devices import resolve_device, resolve_dtype
from crispedit.models.loading import load_model
from crispedit.models.spec import ModelSpec, register_twin
from crispedit.models.twins import clip_tokenizer_from, seeded, write_tiny_clip_vocab

CLIP_ID = "openai/clip-vit-large-patch14"
DINO_ID = "facebook/dinov2-base"
#: CLIP's text context; every caption is padded to it, so a batch gives what its rows give alone.
CLIP_TEXT_LENGTH = 77

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
#: Characters the tiny CLIP vocabulary knows beyond the kit's letters (see _tiny_clip_vocab).
TINY_SYMBOLS = "0123456789-'?:;()"
#: Input side of the tiny twins: small enough for tests, big enough for 4x4 patches of 8 px.
TINY_IMAGE = 32
# The tiny twins run in float64. A matrix product's rounding depends on its shape, so in
# float32 a row embedded among 5 others differs from the same row alone in the 7th digit;
# in float64 that is far below the 9 digits the contract battery (and byte-identical
# builds across runners) compares. Real checkpoints run in their ``dtype`` (float32 by
# default), where scores agree to about 1e-7 whatever the batching.


# --- preprocessing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``resize``, centre-crop ``crop`` (h, w), scale to [0, 1], normalise."""

    resize: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor: Any) -> Preprocess:
        """The numbers of a transformers image processor (CLIPImageProcessor, BitImageProcessor...)."""
        size = _as_dict(processor.size)
        crop = _as_dict(getattr(processor, "crop_size", None) or {})
        if size.get("shortest_edge"):
            resize = int(size["shortest_edge"])
        else:  # a square resize ({"height": h, "width": w}): treat its side as the short side
            resize = int(min(size["height"], size["width"]))
        if getattr(processor, "do_center_crop", True) and crop.get("height"):
            box = (int(crop["height"]), int(crop["width"]))
        else:
            box = (resize, resize)
        return cls(resize, box, tuple(processor.image_mean), tuple(processor.image_std))  # type: ignore[arg-type]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """transformers' rule: the short side becomes ``resize``, the long side ``int(resize * long / short)``."""
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if height <= width else (new_long, self.resize)

    def __call__(self, images: Sequence[np.ndarray], device: Any) -> Any:
        """uint8 HxWx3 arrays -> a normalised float32 (N, 3, h, w) tensor on ``device``, in input order."""
        import torch
        import torch.nn.functional as F

        out = torch.empty((len(images), 3, *self.crop), dtype=torch.float32, device=device)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(i)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        for shape, members in groups.items():
            if len(shape) != 3 or shape[2] != 3:
                raise ValueError(f"expected HxWx3 uint8 images, got shape {shape}")
            stacked = np.stack([images[i] for i in members])
            x = torch.from_numpy(stacked).to(device, non_blocking=True).permute(0, 3, 1, 2)
            h, w = self.output_size(shape[0], shape[1])
            if (h, w) != (shape[0], shape[1]) and x.device.type == "cpu":
                # torch's uint8 antialiased kernel (channels-last, vectorised) rounds to uint8 as PIL
                # does, and is ~10x faster than resizing floats
                x = x.contiguous(memory_format=torch.channels_last)
                x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).float()
            elif (h, w) != (shape[0], shape[1]):  # CUDA resizes floats only
                x = F.interpolate(x.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=True)
                x = x.clamp_(0.0, 255.0).round_()  # the processors resize uint8 images: keep their rounding
            else:
                x = x.float()
            top, left = max(0, (h - self.crop[0]) // 2), max(0, (w - self.crop[1]) // 2)
            x = x[:, :, top : top + self.crop[0], left : left + self.crop[1]]
            if x.shape[-2:] != self.crop:  # smaller than the crop: pad, as the processors do
                pad_h, pad_w = self.crop[0] - x.shape[-2], self.crop[1] - x.shape[-1]
                x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
            out[members] = (x / 255.0 - mean) / std
        return out


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return {k: getattr(value, k) for k in ("shortest_edge", "height", "width") if getattr(value, k, None) is not None}


# --- tiny twins ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _tiny_clip_vocab() -> str:
    """The tiny CLIP BPE vocabulary, written once per process (a tokenizer is read from files).

    The kit's words and letters plus digits and a few symbols: an unknown character maps to
    ``<|endoftext|>``, where CLIP pools, so "photo 1" and "photo 2" would embed alike.
    """
    import tempfile

    return str(write_tiny_clip_vocab(tempfile.mkdtemp(prefix="crispedit-scoring-vocab-"), symbols=TINY_SYMBOLS))


def tiny_clip_tokenizer() -> Any:
    return clip_tokenizer_from(_tiny_clip_vocab(), max_length=CLIP_TEXT_LENGTH)


def tiny_clip(seed: int) -> tuple[Any, Any, Preprocess]:
    """CLIPModel with 1-layer 16-wide towers on 32-px images (16 patches), its tokenizer and preprocessing."""
    from transformers import CLIPConfig, CLIPModel


    tokenizer = tiny_clip_tokenizer()
    text = dict(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=CLIP_TEXT_LENGTH, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=TINY_IMAGE, patch_size=8)
    with seeded(seed):
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).double().eval()
    return model, tokenizer, Preprocess(TINY_IMAGE, (TINY_IMAGE, TINY_IMAGE), _CLIP_MEAN, _CLIP_STD)


def tiny_dino(seed: int) -> tuple[Any, Preprocess]:
    """Dinov2Model, 1 layer, 16 wide, 32-px input; preprocessing as DINOv2's (resize 8/7 of the crop, ImageNet stats)."""
    from transformers import Dinov2Config, Dinov2Model


    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=TINY_IMAGE, patch_size=8)
    with seeded(seed):
        model = Dinov2Model(config).double().eval()
    return model, Preprocess(TINY_IMAGE * 8 // 7, (TINY_IMAGE, TINY_IMAGE), _IMAGENET_MEAN, _IMAGENET_STD)


register_twin("clip-scorer")(tiny_clip)
register_twin("dino-scorer")(tiny_dino)


# --- loading --------------------------------------------------------------------------------


def _pretrained(spec: ModelSpec, **kwargs: Any) -> dict[str, Any]:
    return {**({"revision": spec.revision} if spec.revision else {}), **kwargs}


def load_clip(spec: ModelSpec, seed: int = 0) -> tuple[Any, Any, Preprocess]:
    """(CLIPModel, tokenizer, preprocessing) for a spec: the tiny twin, or the checkpoint by id and revision."""

    def load(model_id: str, **kwargs: Any) -> tuple[Any, Any, Preprocess]:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(model_id, dtype=resolve_dtype(spec.dtype), **kwargs).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_id, **kwargs)
        return model, tokenizer, Preprocess.from_processor(AutoImageProcessor.from_pretrained(model_id, **kwargs))

    return load_model(spec, "clip-scorer", load, seed)


def load_dino(spec: ModelSpec, seed: int = 0) -> tuple[Any, Preprocess]:
    """(DINOv2 model, preprocessing): AutoModel picks Dinov2Model or Dinov2WithRegistersModel from the config."""

    def load(model_id: str, **kwargs: Any) -> tuple[Any, Preprocess]:
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(model_id, dtype=resolve_dtype(spec.dtype), **kwargs).eval()
        return model, Preprocess.from_processor(AutoImageProcessor.from_pretrained(model_id, **kwargs))

    return load_model(spec, "dino-scorer", load, seed)


# --- the embedder ---------------------------------------------------------------------------


def _pooled(output: Any) -> Any:
    """transformers 5 returns a model output from get_*_features; older versions a tensor."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


class Embedder:
    """CLIP image/text and DINOv2 image embeddings, batched on one device.

    ``clip`` or ``dino`` may be None when a caller needs only one family. Inputs are uint8
    HxWx3 arrays (or PIL images) and strings; outputs are normalised float32 tensors on the
    device. ``batch_size`` bounds one forward pass (the model's batch, not the stage's).
    """

    def __init__(self, clip: ModelSpec | None = None, dino: ModelSpec | None = None, device: str = "auto",
                 seed: int = 0, batch_size: int = 64) -> None:
        import torch

        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.clip = self.tokenizer = self.clip_pre = None
        self.dino = self.dino_pre = None
        if clip is not None:
            self.clip, self.tokenizer, self.clip_pre = load_clip(clip, seed)
            self.clip.to(self.device)
        if dino is not None:
            self.dino, self.dino_pre = load_dino(dino, seed + 1)
            self.dino.to(self.device)
        self._grad = torch.inference_mode
        self._backend: Any = None

    # images and texts one by one, in chunks -------------------------------------------------
    def clip_image(self, images: Sequence[Any]) -> Any:
        """Normalised CLIP image embeddings (the projection CLIP compares with text)."""
        assert self.clip is not None and self.clip_pre is not None, "no CLIP model loaded"
        return self._chunked(images, lambda chunk: self._clip_image(chunk))

    def clip_text(self, texts: Sequence[str]) -> Any:
        """Normalised CLIP text embeddings; captions longer than CLIP's 77 tokens are cut."""
        assert self.clip is not None and self.tokenizer is not None, "no CLIP model loaded"
        return self._chunked(list(texts), lambda chunk: self._clip_text(chunk))

    def dino_image(self, images: Sequence[Any]) -> Any:
        """Normalised DINOv2 CLS embeddings (after the final layer norm, as ``pooler_output``)."""
        assert self.dino is not None and self.dino_pre is not None, "no DINOv2 model loaded"
        return self._chunked(images, lambda chunk: self._dino_image(chunk))

    def _chunked(self, items: Sequence[Any], run: Any) -> Any:
        import torch

        if len(items) == 0:
            return torch.empty((0, 0), device=self.device)
        parts = [run(list(items[lo : lo + self.batch_size])) for lo in range(0, len(items), self.batch_size)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _clip_image(self, images: Sequence[Any]) -> Any:
        import torch.nn.functional as F

        with self._grad():
            x = self.clip_pre([as_array(i) for i in images], self.device).to(self.clip.dtype)
            return F.normalize(_pooled(self.clip.get_image_features(pixel_values=x)).double(), dim=-1)

    def _clip_text(self, texts: list[str]) -> Any:
        import torch.nn.functional as F

        input_ids, attention_mask = self.tokenize(texts)
        with self._grad():
            out = self.clip.get_text_features(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
            return F.normalize(_pooled(out).double(), dim=-1)

    def tokenize(self, texts: list[str]) -> tuple[Any, Any]:
        """(input_ids, attention_mask), padded and cut to CLIP's 77 tokens.

        Through the tokenizer's Rust backend when it has one: the same ids as calling the
        tokenizer with ``padding="max_length"``, without the Python-side conversion that
        costs more than a tiny model's forward pass.
        """
        import torch

        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            ids = self.tokenizer(texts, padding="max_length", truncation=True, max_length=CLIP_TEXT_LENGTH, return_tensors="pt")
            return ids.input_ids, ids.attention_mask
        if self._backend is None:
            from copy import deepcopy

            self._backend = deepcopy(backend)
            self._backend.enable_truncation(CLIP_TEXT_LENGTH)
            self._backend.enable_padding(length=CLIP_TEXT_LENGTH, pad_id=self.tokenizer.pad_token_id, pad_token=self.tokenizer.pad_token)
        encoded = self._backend.encode_batch(texts)
        ids = torch.from_numpy(np.array([e.ids for e in encoded], dtype=np.int64))
        mask = torch.from_numpy(np.array([e.attention_mask for e in encoded], dtype=np.int64))
        return ids, mask

    def _dino_image(self, images: Sequence[Any]) -> Any:
        import torch.nn.functional as F

        with self._grad():
            x = self.dino_pre([as_array(i) for i in images], self.device).to(self.dino.dtype)
            out = self.dino(pixel_values=x)
            return F.normalize(out.last_hidden_state[:, 0].double(), dim=-1)

    # a batch of pairs -------------------------------------------------------------------------
    def embed_pairs(self, sources: Sequence[np.ndarray | None], targets: Sequence[np.ndarray | None],
                    source_texts: Sequence[str | None] = (), target_texts: Sequence[str | None] = ()) -> PairEmbeddings:
        """Every embedding a pair score needs, each distinct image and caption computed once."""
        images = _Unique()
        src = [images.add(a) for a in sources]
        tgt = [images.add(a) for a in targets]
        texts = _Unique()
        src_t = [texts.add(t) for t in source_texts] or [None] * len(sources)
        tgt_t = [texts.add(t) for t in target_texts] or [None] * len(sources)
        clip_images = self.clip_image(images.items) if self.clip is not None and images.items else None
        dino_images = self.dino_image(images.items) if self.dino is not None and images.items else None
        clip_texts = self.clip_text(texts.items) if self.clip is not None and texts.items else None
        return PairEmbeddings(src, tgt, src_t, tgt_t, clip_images, dino_images, clip_texts)


def as_array(image: Any) -> np.ndarray:
    """A uint8 HxWx3 RGB array from an array or a PIL image."""
    if isinstance(image, np.ndarray):
        return image
    return np.asarray(image.convert("RGB"))


class _Unique:
    """Positions of distinct items: arrays by identity (children share their parent's), texts by value."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._seen: dict[Any, int] = {}

    def add(self, item: Any) -> int | None:
        if item is None:
            return None
        key = id(item) if isinstance(item, np.ndarray) else item
        if key not in self._seen:
            self._seen[key] = len(self.items)
            self.items.append(item)
        return self._seen[key]


@dataclass
class PairEmbeddings:
    """Row positions into the unique-embedding tensors, per pair; None where an input is missing."""

    source: list[int | None]
    target: list[int | None]
    source_text: list[int | None]
    target_text: list[int | None]
    clip_images: Any
    dino_images: Any
    clip_texts: Any

    def scores(self) -> list[dict[str, float | None]]:
        """clip_t_source, clip_t_target, clip_i, clip_dir, dino_i for every pair (None where inputs lack)."""
        clip_i = _cos(self.clip_images)
        dino_i = _cos(self.dino_images)
        image_text = _cross(self.clip_images, self.clip_texts)
        out: list[dict[str, float | None]] = []
        for s, t, ts, tt in zip(self.source, self.target, self.source_text, self.target_text, strict=True):
            row: dict[str, float | None] = {}
            if self.clip_images is not None:
                row["clip_t_source"] = image_text(s, ts)
                row["clip_t_target"] = image_text(t, tt)
                row["clip_i"] = clip_i(s, t)
                row["clip_dir"] = (
                    directional_similarity(self.clip_images[s], self.clip_images[t], self.clip_texts[ts], self.clip_texts[tt])
                    if None not in (s, t, ts, tt) else None
                )
            if self.dino_images is not None:
                row["dino_i"] = dino_i(s, t)
            out.append(row)
        return out


def _cos(table: Any) -> Any:
    def pick(a: int | None, b: int | None) -> float | None:
        if table is None or a is None or b is None:
            return None
        return float(table[a] @ table[b])

    return pick


def _cross(images: Any, texts: Any) -> Any:
    def pick(a: int | None, b: int | None) -> float | None:
        if images is None or texts is None or a is None or b is None:
            return None
        return float(images[a] @ texts[b])

    return pick


def directional_similarity(source_image: Any, target_image: Any, source_text: Any, target_text: Any) -> float:
    """InstructPix2Pix's CLIP directional similarity: cos(E(target) - E(source), E(target text) - E(source text)).

    The embeddings are the normalised ones (as IP2P's ClipSimilarity returns). A pair whose
    images (or captions) embed identically has no direction: its score is 0, as
    ``torch.nn.functional.cosine_similarity`` gives with its epsilon.
    """
    import torch

    image_dir = (target_image - source_image).double()
    text_dir = (target_text - source_text).double()
    norms = image_dir.norm() * text_dir.norm()
    if float(norms) <= 1e-12:
        return 0.0
    return float(torch.dot(image_dir, text_dir) / norms)


def finite_or_none(value: float | None) -> float | None:
    """NaN/inf from a broken model would poison a threshold silently: store them as missing."""
    return value if value is not None and math.isfinite(value) else None
