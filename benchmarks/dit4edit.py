"""DiT4Edit: seconds per pair with and without patch merging, and the inversion's reconstruction error.

    python benchmarks/dit4edit.py            # tiny twins on the CPU (one thread), a few sizes
    python benchmarks/dit4edit.py --full     # PixArt-XL-2's architecture, random weights, on a GPU:
                                             # 512x512, 1024x1024, 1024x2048 (DiT4Edit's Table 2 sizes)

A pair = encode + 30-step inversion (with its corrections) + 30 joint steps of both branches
+ decode; T5 is not in the loop (it runs once per prompt, cached). The reconstruction error is
the relative L2 error of the regenerated source branch against the encoded source, with
the source caption in both branches. Random weights: the timings are the architecture's,
the errors only compare the inversion settings with one another.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch

from crispedit.dit4edit.models import PixArtModels, TextModels, tiny_pixart, tiny_t5, tiny_t5_tokenizer
from crispedit.dit4edit.pipeline import DiT4EditPipeline, EditSettings, PromptEncoder

SOURCE, TARGET = "a photo of a red cat on the grass", "a photo of a blue dog on the grass"


def picture(width: int, height: int) -> np.ndarray:
    """A smooth image with an object: something the VAE and the matching can hold on to."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 100)], -1).astype(np.uint8)
    image[height // 4 : height // 2, width // 3 : 2 * width // 3] = (200, 50, 40)
    return image


def full_size(device: torch.device) -> tuple[PixArtModels, TextModels]:
    """PixArt-XL-2 (28 blocks, 16 heads x 72, caption 4096) and the SD VAE's shape, random weights, float16.

    The text side is a 1-layer T5 of width 4096 (T5-XXL's), since only its output shape matters here.
    """
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    transformer = PixArtTransformer2DModel(
        sample_size=128, num_layers=28, attention_head_dim=72, num_attention_heads=16, caption_channels=4096, in_channels=4,
        out_channels=8, patch_size=2, cross_attention_dim=1152, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=False,
    ).to(device, torch.float16).eval()
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, sample_size=512,
    ).to(device, torch.float16).eval()
    tokenizer = tiny_t5_tokenizer(max_length=120)
    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=1,
                                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)).eval()
    return PixArtModels(transformer, vae, pixart_scheduler(), "PixArt-XL-2 (random)"), TextModels(tokenizer, encoder, "t5-width")


def pixart_scheduler() -> Any:
    from diffusers import DPMSolverMultistepScheduler

    from crispedit.dit4edit.models import PIXART_SCHEDULER

    return DPMSolverMultistepScheduler(**PIXART_SCHEDULER)


def seconds_per_pair(
    pipe: DiT4EditPipeline, width: int, height: int, merge_ratio: float, repeats: int, device: torch.device,
) -> tuple[float, int]:
    """Median seconds per pair, and the model calls one pair made (the inversion's corrections vary with merging)."""
    image = picture(width, height)
    settings = EditSettings(steps=30, merge_ratio=merge_ratio)
    pipe.edit(image, SOURCE, TARGET, settings)  # warm-up: caches T5, allocators, kernels
    times = []
    calls = pipe.model_calls
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        pipe.edit(image, SOURCE, TARGET, settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (pipe.model_calls - calls) // repeats


def reconstruction(pipe: DiT4EditPipeline, width: int, height: int) -> list[tuple[str, float, int]]:
    image = picture(width, height)
    out = []
    runs = (
        ("naive", 0, 1, 2.5e-4), ("1 correction", 1, 1, 2.5e-4), ("3 corrections (default)", 3, 1, 2.5e-4),
        ("3 corrections, tolerance 1e-6", 3, 1, 1e-6), ("6 corrections, 3 passes, tolerance 1e-6", 6, 3, 1e-6),
    )
    for label, corrections, passes, tolerance in runs:
        settings = EditSettings(steps=30, merge_ratio=0.0, max_corrections=corrections, passes=passes, tolerance=tolerance)
        result = pipe.edit(image, SOURCE, SOURCE, settings)
        out.append((label, result.reconstruction_error, result.inversion.evaluations))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="PixArt-XL-2's architecture on a GPU instead of the tiny twins")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.full:
        device = torch.device("cuda")
        models, text = full_size(device)
        encoder = PromptEncoder(lambda: text, device, "cpu")
        pipe = DiT4EditPipeline(models, encoder, 120, device)
        sizes = [(512, 512), (1024, 1024), (2048, 1024)]
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
        pipe = DiT4EditPipeline(tiny_pixart(0), PromptEncoder(lambda: tiny_t5(1), device, "keep"), 16, device)
        sizes = [(64, 64), (128, 128), (256, 256)]
    print(f"device: {torch.cuda.get_device_name() if args.full else platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, model: {pipe.models.name}")
    print("| size | tokens | no merging: s/pair (model calls) | merge 0.2 | merge 0.5 | saving at 0.2 / 0.5 |")
    print("|---|---|---|---|---|---|")
    for width, height in sizes:
        tokens = (width // pipe.multiple) * (height // pipe.multiple)
        (base, c0), (light, c2), (heavy, c5) = (seconds_per_pair(pipe, width, height, r, args.repeats, device) for r in (0.0, 0.2, 0.5))
        print(f"| {width}x{height} | {tokens} | {base:.3f} ({c0}) | {light:.3f} ({c2}) | {heavy:.3f} ({c5}) "
              f"| {100 * (1 - light / base):.0f}% / {100 * (1 - heavy / base):.0f}% |")
    width, height = sizes[1] if not args.full else sizes[0]
    print(f"\nreconstruction at {width}x{height}, 30 steps, source caption in both branches:")
    print("| inversion | relative L2 error | model calls |")
    print("|---|---|---|")
    for label, error, calls in reconstruction(pipe, width, height):
        print(f"| {label} | {error:.2e} | {calls} |")


if __name__ == "__main__":
    main()
