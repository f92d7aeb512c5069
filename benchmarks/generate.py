"""What Prompt-to-Prompt control and blending add to the bare diffusers SDXL pipeline, same steps, same batch.

    python benchmarks/generate.py                      # tiny twins on the CPU (what any machine can run)
    python benchmarks/generate.py --full --device cuda --side 1024 --steps 30   # full-size SDXL, random weights

Every variant draws the same rows: P pairs = 2P images ([source, target] x P) in one call.

* ``bare`` - stock ``StableDiffusionXLPipeline`` with diffusers' fused attention (AttnProcessor2_0);
* ``p2p`` - the P2P processor on every attention layer: self-attention injection for the first
  half of the steps, cross-attention control for 0.8 of them (the step counter is a callback);
* ``p2p+mask`` - plus soft-mask mixing of every attention output and latent blending after
  every step (the most work crispedit's P2P does).

``--full`` builds the real SDXL UNet/VAE/text-encoder SHAPES with random weights (no download)
from diffusers' and transformers' own configs, so timings and memory are those of SDXL.
Reported: median seconds per call, seconds per pair, pairs per GPU-hour, peak GPU memory, and
the overhead against ``bare``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from crispedit.models.spec import ModelSpec
from crispedit.sdxl.blending import StepWindow
from crispedit.sdxl.options import RunOptions, Sampler
from crispedit.sdxl.text2image import Controls, PairRequest, run_pairs

PROMPTS = [("a cat on the tree", "a dog on the tree"), ("a red car", "a blue car on a street"), ("a man", "a man with a hat")]


def full_size_pipeline(device: str, dtype: torch.dtype) -> Any:
    """SDXL base's architecture with random weights: diffusers' and transformers' configs, no checkpoint."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from crispedit.sdxl.models import tiny_scheduler, tiny_tokenizers

    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, layers_per_block=2, sample_size=1024, scaling_factor=0.13025,
    )
    tokenizer, tokenizer_2 = tiny_tokenizers()  # tokenisation cost is negligible; the encoders are full size
    base = {"vocab_size": len(tokenizer), "max_position_embeddings": 77, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": 0}
    encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, **base))
    encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32, projection_dim=1280, hidden_act="gelu", **base,
    ))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
        scheduler=tiny_scheduler(), add_watermarker=False,
    )
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float | None]]:
    """Median seconds and peak GPU memory per variant; the variants take turns, so load drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, float | None] = {}
    for name, fn in variants.items():  # warm-up, and the peak memory of one call
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        fn()
        sync()
        peaks[name] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    for _ in range(repeats):
        for name, fn in variants.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), peaks[name]) for name in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full-size SDXL shapes with random weights (needs a GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--side", type=int, default=128, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=2, help="pairs per call (rows = 2 x pairs)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.full:
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        pipe = full_size_pipeline(args.device, dtype)
    else:
        from crispedit.sdxl.models import load_pipeline

        pipe = load_pipeline("t2i", ModelSpec(id="tiny"), RunOptions(device=args.device), seed=0)
    sampler = Sampler(steps=args.steps, guidance_scale=5.0)
    side = args.side
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 255
    chosen = [PROMPTS[i % len(PROMPTS)] for i in range(args.pairs)]
    plain = [PairRequest(s, t, seed=i, self_fraction=0.5, cross_fraction=0.8) for i, (s, t) in enumerate(chosen)]
    masked = [PairRequest(s, t, seed=i, self_fraction=0.5, cross_fraction=0.8, mask=mask) for i, (s, t) in enumerate(chosen)]
    prompts = [p for pair in chosen for p in pair]

    def bare() -> None:
        from crispedit.sdxl.batching import generators

        with torch.no_grad():
            pipe(prompt=prompts, generator=generators([i for i in range(args.pairs) for _ in range(2)]), height=side, width=side,
                 num_inference_steps=args.steps, guidance_scale=5.0, output_type="np")

    variants: dict[str, Callable[[], object]] = {
        "bare": bare,
        "p2p": lambda: run_pairs(pipe, plain, sampler, side, side, Controls(attention_mix=None, latent_blend=None)),
        "p2p+mask": lambda: run_pairs(pipe, masked, sampler, side, side, Controls(attention_mix=StepWindow(), latent_blend=StepWindow())),
    }
    results = interleaved(variants, args.repeats)
    where = f"{'full-size SDXL (random weights)' if args.full else 'tiny twins'} on {args.device}"
    print(f"{where}, {side}x{side}, {args.steps} steps, {args.pairs} pairs per call (CFG on), median of {args.repeats}\n")
    print(f"| variant | s per call | s per pair | pairs per {'GPU-' if args.device.startswith('cuda') else 'CPU-'}hour | peak GPU GiB | overhead vs bare |")
    print("|---|---:|---:|---:|---:|---:|")
    base = results["bare"][0]
    for name, (seconds, peak) in results.items():
        per_pair = seconds / args.pairs
        memory = f"{peak:.2f}" if peak is not None else "-"
        print(f"| {name} | {seconds:.3f} | {per_pair:.3f} | {3600 / per_pair:.0f} | {memory} | {100 * (seconds / base - 1):+.1f}% |")


if __name__ == "__main__":
    main()
