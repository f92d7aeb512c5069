"""Region-hold overhead: MaskGIT sampling with region-hold vs plain sampling, same config, one run.

Times the transformer sampling loop (the dominant cost of an edit) with random weights,
random reference tokens and random text states of the config's shapes; VQ encode/decode and
the text encoders are the same for both variants and left out. Runs alternate between the
two variants so drift (other load on the machine) hits both equally.

    python benchmarks/mgt_sampling.py                        # small config, CPU
    python benchmarks/mgt_sampling.py --config full --device cuda --dtype bf16 --steps 36
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crispedit.mgt.config import MGTConfig, resolve_config  # noqa: E402
from crispedit.mgt.sampler import maskgit_sample  # noqa: E402
from crispedit.mgt.text import TextEmbeddings  # noqa: E402
from crispedit.mgt.transformer import build_transformer  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _extra_work_per_step(model, ref, cond, micro, blocks, tau, device, steps, plain_total):
    """Median time of what region-hold adds to one step, measured apart from the forward pass:
    the captured text-query rows in each chosen block and the filtered hold map. Robust to
    load from other processes, which swamps end-to-end differences on a shared CPU."""
    from crispedit.mgt.attention import AttentionCapture
    from crispedit.mgt.region_hold import hold_mask

    cfg = model.config
    heads, d = cfg.num_attention_heads, cfg.attention_head_dim
    side = ref.shape[-1]
    n_grid = (side // 2) ** 2 if cfg.downsample else side * side
    n_text = cond.hidden.shape[1]
    b = ref.shape[0]
    q = torch.randn(b, heads, n_text, d, device=device, dtype=cond.hidden.dtype)
    k = torch.randn(b, heads, n_text + n_grid, d, device=device, dtype=cond.hidden.dtype)
    grid = (side // 2, side // 2) if cfg.downsample else (side, side)
    times = []
    for _ in range(20):
        _sync(device)
        start = time.perf_counter()
        capture = AttentionCapture(set(blocks))
        for _blk in blocks:
            capture.add(q, k, n_text)
        hold_mask(capture.consolidated(), grid, (side, side), tau)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), plain_total / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", help="bundled name (tiny, small, full) or YAML path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tau", type=float, default=0.3)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = MGTConfig.load(resolve_config(args.config))
    t = cfg.model.transformer
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    steps = args.steps or cfg.sample.steps
    guidance = cfg.sample.guidance_scale if args.guidance is None else args.guidance
    vq_down = 2 if cfg.model.vq.tiny else 16  # tiny VQ twin: 2x; Meissonic VQ: 16x
    side = cfg.model.resolution // vq_down

    torch.manual_seed(0)
    model = build_transformer(t).to(device)
    model = (model if dtype == torch.float32 else model.to(dtype)).eval()  # ModelMixin warns on a no-op cast
    n_params = sum(p.numel() for p in model.parameters())
    b = args.batch
    ref = torch.randint(0, t.codebook_size, (b, side, side), device=device)
    cond = TextEmbeddings(torch.randn(b, cfg.model.text_max_length, t.joint_attention_dim, device=device, dtype=dtype),
                          torch.randn(b, t.pooled_projection_dim, device=device, dtype=dtype))
    uncond = TextEmbeddings(cond.hidden[:1] * 0, cond.pooled[:1] * 0)
    micro = torch.tensor([[cfg.model.resolution] * 2 + [0.0, 0.0, 6.0]] * b, device=device, dtype=dtype)
    blocks = tuple(i for i in cfg.sample.capture_blocks if i < model.num_blocks)

    def run(tau: float | None) -> float:
        g = torch.Generator(device=device).manual_seed(0)
        _sync(device)
        start = time.perf_counter()
        maskgit_sample(model, ref, cond, uncond, micro, steps=steps, guidance_scale=guidance, generator=g,
                       reference_strength=cfg.sample.reference_strength, tau=tau, capture_blocks=blocks,
                       temperature=tuple(cfg.sample.temperature))
        _sync(device)
        return time.perf_counter() - start

    run(None), run(args.tau)  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    plain, held = [], []
    for _ in range(args.repeats):
        plain.append(run(None))
        held.append(run(args.tau))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    p_med, h_med = statistics.median(plain), statistics.median(held)
    overhead = 100.0 * (h_med - p_med) / p_med
    overhead_min = 100.0 * (min(held) - min(plain)) / min(plain)
    extra, per_step = _extra_work_per_step(model, ref, cond, micro, blocks, args.tau, device, steps, min(plain))
    print(f"config={cfg.name} params={n_params / 1e6:.1f}M image={cfg.model.resolution}px tokens={side}x{side} "
          f"steps={steps} guidance={guidance} batch={b} device={device} dtype={args.dtype} "
          f"threads={torch.get_num_threads()} capture_blocks={list(blocks)} tau={args.tau}")
    print("| variant      | median s/edit | min s/edit | runs |")
    print("|--------------|---------------|------------|------|")
    print(f"| plain        | {p_med / b:13.3f} | {min(plain) / b:10.3f} | {len(plain):4d} |")
    print(f"| region-hold  | {h_med / b:13.3f} | {min(held) / b:10.3f} | {len(held):4d} |")
    print(f"region-hold overhead, end to end: {overhead:+.2f}% (medians), {overhead_min:+.2f}% (minimums); target < 5%")
    print(f"region-hold extra work per step (capture in {len(blocks)} blocks + filtered hold map), timed in isolation: "
          f"{extra * 1e3:.2f} ms of {per_step * 1e3:.1f} ms per step = {100 * extra / per_step:.2f}%")
    if device.type == "cuda":
        print(f"peak GPU memory: {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
