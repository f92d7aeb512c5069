"""CLIP + DINOv2 scoring throughput (pairs/s) against the bare model forward on the same batches.

The scorer is ``clip_filter.score`` (crispedit.models.clip): preprocessing from uint8 arrays on
the device, tokenising, deduplicating images and captions, every score. The bare forward
runs only the model calls the scores need (CLIP image features of sources and targets, CLIP
text features of both captions, DINOv2 on both images) on tensors prepared before the clock
starts: the least work any scorer could do. A second baseline, "processor", is the naive
scorer: transformers' image processors (PIL) and the tokenizer on every call, then the same
forwards. Ratio = scorer pairs/s over bare pairs/s; the aim is >= 0.9.

    python benchmarks/filters.py                       # tiny twins on the CPU
    python benchmarks/filters.py --full --device cuda  # random-init ViT-L/14 and DINOv2-base shapes on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crispedit.core.sample import Sample  # noqa: E402
from crispedit.core.stage import BuildContext  # noqa: E402
from crispedit.filters.clip_filter import ClipFilter, ClipFilterParams  # noqa: E402
from crispedit.models.clip import CLIP_TEXT_LENGTH, Preprocess  # noqa: E402


def pairs(count: int, side: int) -> list[Sample]:
    """Distinct source/target photos-like arrays (crops of scikit-image photographs) and captions."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        source = np.ascontiguousarray(photo[y : y + side, x : x + side])
        target = np.clip(source.astype(np.int16) + int(rng.integers(-60, 60)), 0, 255).astype(np.uint8)
        out.append(Sample(id=str(i), index=i, source_ref=str(i), source_image=source, target_image=target,
                          source_caption=f"a photo of a cat number {i}", target_caption=f"a photo of a red dog number {i}"))
    return out


def full_size_stage(device: str) -> ClipFilter:
    """ClipFilter with random-init models of ViT-L/14's and DINOv2-base's shapes (no weights to download)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2Config, Dinov2Model

    from crispedit.models.clip import _CLIP_MEAN, _CLIP_STD, _IMAGENET_MEAN, _IMAGENET_STD, Embedder, tiny_clip_tokenizer

    stage = ClipFilter(ClipFilterParams(clip_model="tiny", dino_model="tiny", device=device), BuildContext("bench", "bench", 0, tiny=True))
    stage.embedder = Embedder(None, None, device)
    tokenizer: CLIPTokenizer = tiny_clip_tokenizer()
    text = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224, patch_size=14)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    stage.embedder.clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)).to(device, dtype).eval()
    stage.embedder.tokenizer = tokenizer
    stage.embedder.clip_pre = Preprocess(224, (224, 224), _CLIP_MEAN, _CLIP_STD)
    dino = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=518, patch_size=14)
    stage.embedder.dino = Dinov2Model(dino).to(device, dtype).eval()
    stage.embedder.dino_pre = Preprocess(256, (224, 224), _IMAGENET_MEAN, _IMAGENET_STD)
    stage.head = None
    return stage


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_inputs(stage: ClipFilter, batch: list[Sample]) -> tuple:
    e = stage.embedder
    images = [s.source_image for s in batch] + [s.target_image for s in batch]
    clip_x = e.clip_pre(images, e.device).to(e.clip.dtype)
    dino_x = e.dino_pre(images, e.device).to(e.dino.dtype)
    texts = [s.source_caption for s in batch] + [s.target_caption for s in batch]
    ids = e.tokenizer(texts, padding="max_length", truncation=True, max_length=CLIP_TEXT_LENGTH, return_tensors="pt")
    return clip_x, dino_x, ids.input_ids.to(e.device), ids.attention_mask.to(e.device)


def bare_forward(stage: ClipFilter, inputs: tuple) -> None:
    e = stage.embedder
    clip_x, dino_x, ids, mask = inputs
    with torch.inference_mode():
        e.clip.get_image_features(pixel_values=clip_x)
        e.clip.get_text_features(input_ids=ids, attention_mask=mask)
        e.dino(pixel_values=dino_x)


def processor_forward(stage: ClipFilter, batch: list[Sample], clip_proc: object, dino_proc: object) -> None:
    e = stage.embedder
    images = [s.source_image for s in batch] + [s.target_image for s in batch]
    texts = [s.source_caption for s in batch] + [s.target_caption for s in batch]
    clip_x = clip_proc(images=images, return_tensors="pt").pixel_values.to(e.device, e.clip.dtype)
    dino_x = dino_proc(images=images, return_tensors="pt").pixel_values.to(e.device, e.dino.dtype)
    ids = e.tokenizer(texts, padding="max_length", truncation=True, max_length=CLIP_TEXT_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        a = F.normalize(e.clip.get_image_features(pixel_values=clip_x).pooler_output.float(), dim=-1)
        t = F.normalize(e.clip.get_text_features(input_ids=ids.input_ids.to(e.device)).pooler_output.float(), dim=-1)
        d = F.normalize(e.dino(pixel_values=dino_x).last_hidden_state[:, 0].float(), dim=-1)
        n = len(batch)
        [(float(a[i] @ a[n + i]), float(d[i] @ d[n + i]), float(a[i] @ t[i])) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="pairs per stage batch")
    parser.add_argument("--side", type=int, default=64, help="image side in pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="ViT-L/14 + DINOv2-base shapes (random init) instead of the tiny twins")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import BitImageProcessorPil, CLIPImageProcessorPil

    if args.full:
        stage = full_size_stage(args.device)
    else:
        stage = ClipFilter(ClipFilterParams(clip_model="tiny", dino_model="tiny", device=args.device, model_batch_size=2 * args.batch),
                           BuildContext("bench", "bench", 0, tiny=True))
        stage.setup()
    stage.embedder.batch_size = 2 * args.batch  # one forward per tower per stage batch, as the bare loop does
    e = stage.embedder
    clip_proc = CLIPImageProcessorPil(size={"shortest_edge": e.clip_pre.resize}, crop_size={"height": e.clip_pre.crop[0], "width": e.clip_pre.crop[1]})
    dino_proc = BitImageProcessorPil(size={"shortest_edge": e.dino_pre.resize}, crop_size={"height": e.dino_pre.crop[0], "width": e.dino_pre.crop[1]},
                                     image_mean=list(e.dino_pre.mean), image_std=list(e.dino_pre.std))
    data = pairs(args.pairs, args.side)
    batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]
    prepared = [bare_inputs(stage, b) for b in batches]
    stage.score(batches[0])  # warm-up
    bare_forward(stage, prepared[0])
    results: dict[str, list[float]] = {"scorer": [], "bare": [], "processor": []}
    cpu: dict[str, list[float]] = {"scorer": [], "bare": [], "processor": []}  # CPU seconds: steadier on a shared machine
    for _ in range(args.repeats):
        for name in ("bare", "scorer", "processor"):
            sync(e.device)
            began, began_cpu = time.perf_counter(), time.process_time()
            for b, inputs in zip(batches, prepared, strict=True):
                if name == "scorer":
                    stage.score(b)
                elif name == "bare":
                    bare_forward(stage, inputs)
                else:
                    processor_forward(stage, b, clip_proc, dino_proc)
            sync(e.device)
            results[name].append(len(data) / (time.perf_counter() - began))
            cpu[name].append(len(data) / (time.process_time() - began_cpu))
    best = {k: max(v) for k, v in results.items()}
    median = {k: statistics.median(v) for k, v in results.items()}
    label = "ViT-L/14 + DINOv2-base shapes (random init)" if args.full else "tiny twins"
    print(f"{label}, {args.pairs} pairs of {args.side}x{args.side}, batches of {args.batch}, {args.device}, torch threads {torch.get_num_threads()}")
    best_cpu = {k: max(v) for k, v in cpu.items()}
    print(f"| path | pairs/s (best of {args.repeats}) | median | vs bare | pairs per CPU-second (best) | vs bare |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("bare", "scorer", "processor"):
        print(f"| {name} | {best[name]:.1f} | {median[name]:.1f} | {best[name] / best['bare']:.2f} "
              f"| {best_cpu[name]:.1f} | {best_cpu[name] / best_cpu['bare']:.2f} |")


if __name__ == "__main__":
    main()
