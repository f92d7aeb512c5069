"""EditMGT sampling: seconds and peak memory per edit, region-hold overhead, and (with --before)
the sampler of another revision beside this one, with agreement against the released loop.

Times the transformer sampling loop (the dominant cost of an edit) with random weights,
random reference tokens and random text states of the config's shapes; VQ encode/decode and
the text encoders are the same for every variant and left out. Runs alternate between the
variants so drift (other load on the machine) hits them equally, and CPU seconds (process
time, all threads) are given beside wall seconds: on a shared machine they move far less. Peak memory is the process's
peak RSS during the edit on CPU (reset before each edit through /proc/self/clear_refs) and
torch's peak allocation on CUDA, each also given as the increase over the level before it.

--before REV (a git revision, or a file holding an older crispedit/mgt/sampler.py) loads that
sampler next to the current one and reports, for both: s/edit, peak memory, decoded tokens
re-masked per edit (read off the model's inputs by a forward hook), and the share of final
tokens (and of steps with equal inputs) equal to the released EditMGT loop re-implemented in
tests/mgt/released_reference.py, on the same weights and seeds, in the released conventions
(timestep = step index, guidance > 1, temperature (2, 0)); region-hold rows at batch size 1.

    python benchmarks/mgt_sampling.py                               # small config, CPU
    python benchmarks/mgt_sampling.py --steps 8 --before 301591f    # before/after issue 25
    python benchmarks/mgt_sampling.py --full --device cuda          # 960M config, bf16, 36 steps
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crispedit.mgt import sampler as current_sampler  # noqa: E402
from crispedit.mgt.config import MGTConfig, resolve_config  # noqa: E402
from crispedit.mgt.text import TextEmbeddings  # noqa: E402
from crispedit.mgt.transformer import build_transformer  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory of the block it wraps, in MiB: `peak` (absolute) and `extra` (over the start)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = self.extra = float("nan")

    def __enter__(self) -> PeakMemory:
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux)
                Path("/proc/self/clear_refs").write_text("5")
                self.start = _proc_kib("VmRSS") / 1024
            except OSError:
                self.start = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.start == self.start:
            self.peak = _proc_kib("VmHWM") / 1024
        self.extra = self.peak - self.start


def load_sampler(before: str) -> ModuleType:
    """crispedit/mgt/sampler.py at a git revision (or from a file), imported beside the current one."""
    path = Path(before)
    if path.is_file():
        source, origin = path.read_text(), str(path)
    else:
        got = subprocess.run(["git", "-C", str(REPO), "show", f"{before}:crispedit/mgt/sampler.py"],
                             capture_output=True, text=True)
        if got.returncode != 0:
            raise SystemExit(f"--before {before}: {got.stderr.strip() or 'not a revision or file'}")
        source, origin = got.stdout, f"{before}:crispedit/mgt/sampler.py"
    name = "crispedit.mgt._sampler_before"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None, origin=origin))
    module.__package__ = "crispedit.mgt"
    sys.modules[name] = module
    exec(compile(source, origin, "exec"), module.__dict__)  # noqa: S102 - our own file at another revision
    return module


class InputLog:
    """Records the token ids the transformer is given at each step (the first `batch` rows)."""

    def __init__(self, model: torch.nn.Module, batch: int) -> None:
        self.steps: list[torch.Tensor] = []
        self._hook = model.register_forward_pre_hook(lambda m, args: self.steps.append(args[0][:batch].reshape(batch, -1).clone()))

    def close(self) -> None:
        self._hook.remove()


def count_remasked(step_inputs: list[torch.Tensor], final: torch.Tensor, mask_id: int) -> int:
    """Positions decoded at one step's input and masked at the next's, summed over the run."""
    seq = step_inputs + [final.reshape(final.shape[0], -1)]
    return sum(int(((a != mask_id) & (b == mask_id)).sum()) for a, b in zip(seq[:-1], seq[1:]))


def _agreement(samplers: dict[str, ModuleType], model, ref, cond, uncond, micro, steps, guidance, gamma, blocks, tau):
    """Rows (variant, mode, remasked, final equal share, equal steps) against the released loop."""
    from tests.mgt.released_reference import released_sample

    mask_id = model.config.vocab_size - 1
    ref1, cond1 = ref[:1], TextEmbeddings(cond.hidden[:1], cond.pooled[:1])
    n_grid = ref.shape[-1] ** 2 // (4 if model.config.downsample else 1)
    # the released region-hold runs only on a 32x32 transformer grid with guidance (see the reference)
    # (and in fp32: its filter takes a numpy copy of the attention, which bf16 has not)
    fp32 = model.dtype == torch.float32
    modes = [("plain", None)] + ([("region-hold", tau)] if n_grid == 1024 and guidance > 1 and fp32 else [])
    rows = []
    for mode, hold in modes:
        log = InputLog(model, 1)
        theirs = released_sample(model, ref1, cond1.hidden, cond1.pooled, uncond.hidden, uncond.pooled, micro[:1],
                                 num_inference_steps=steps, guidance_scale=guidance, generator=_gen(ref.device),
                                 reference_strength=gamma, attention_enable_blocks=list(blocks) if hold else None,
                                 local_guidance=hold or 0.0)
        log.close()
        theirs_steps = log.steps
        for name, module in samplers.items():
            log = InputLog(model, 1)
            ours = module.maskgit_sample(model, ref1, cond1, uncond, micro[:1], steps=steps, guidance_scale=guidance,
                                         generator=_gen(ref.device), reference_strength=gamma, tau=hold,
                                         capture_blocks=blocks, timestep_mode="step_index")
            log.close()
            same_steps = sum(torch.equal(a, b) for a, b in zip(log.steps, theirs_steps))
            rows.append((name, mode, count_remasked(log.steps, ours, mask_id), float((ours == theirs).float().mean()), same_steps))
        rows.append(("released loop", mode, count_remasked(theirs_steps, theirs, mask_id), 1.0, steps))
    return rows


def _gen(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


def _extra_work_per_step(model, ref, cond, blocks, tau, device):
    """Median time of what region-hold adds to one step, measured apart from the forward pass:
    the captured text-query rows in each chosen block and the filtered hold map. Robust to
    load from other processes, which swamps end-to-end differences on a shared CPU."""
    from crispedit.mgt.attention import AttentionCapture
    from crispedit.mgt.region_hold import hold_mask

    cfg = model.config
    heads, d = cfg.num_attention_heads, cfg.attention_head_dim
    side = ref.shape[-1]
    grid = (side // 2, side // 2) if cfg.downsample else (side, side)
    n_text = cond.hidden.shape[1]
    b = ref.shape[0]
    q = torch.randn(b, heads, n_text, d, device=device, dtype=cond.hidden.dtype)
    k = torch.randn(b, heads, n_text + grid[0] * grid[1], d, device=device, dtype=cond.hidden.dtype)
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
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", help="bundled name (tiny, small, full) or YAML path")
    p.add_argument("--full", action="store_true", help="the 960M config in bf16 with 36 steps (use with --device cuda)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default fp32 (bf16 with --full)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tau", type=float, default=0.3)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--before", default=None, help="git revision (or file) of an older sampler.py to compare with")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.full:
        args.config, args.dtype, args.steps = "full", args.dtype or "bf16", args.steps or 36

    cfg = MGTConfig.load(resolve_config(args.config))
    t = cfg.model.transformer
    device, dtype = torch.device(args.device), DTYPES[args.dtype or "fp32"]
    steps = args.steps or cfg.sample.steps
    guidance = cfg.sample.guidance_scale if args.guidance is None else args.guidance
    gamma = cfg.sample.reference_strength
    vq_down = 2 if cfg.model.vq.tiny else 16  # tiny VQ twin: 2x; Meissonic VQ: 16x
    side = cfg.model.resolution // vq_down
    samplers = {"this tree": current_sampler}
    if args.before:
        samplers = {f"before ({args.before})": load_sampler(args.before), **samplers}

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

    def run(module: ModuleType, tau: float | None) -> tuple[float, float, PeakMemory]:
        g = _gen(device)
        with PeakMemory(device) as mem:
            start, cpu_start = time.perf_counter(), time.process_time()
            module.maskgit_sample(model, ref, cond, uncond, micro, steps=steps, guidance_scale=guidance, generator=g,
                                  reference_strength=gamma, tau=tau, capture_blocks=blocks,
                                  temperature=tuple(cfg.sample.temperature))
            _sync(device)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        return seconds, cpu, mem

    variants = {"plain": (current_sampler, None), "region-hold": (current_sampler, args.tau)}
    for name, module in samplers.items():
        if module is not current_sampler:
            variants[f"plain, {name}"] = (module, None)
    for module, tau in variants.values():  # warm-up (allocator, kernels)
        run(module, tau)
    results: dict[str, list[tuple[float, float, PeakMemory]]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (module, tau) in variants.items():
            results[name].append(run(module, tau))

    print(f"config={cfg.name} params={n_params / 1e6:.1f}M image={cfg.model.resolution}px tokens={side}x{side} "
          f"steps={steps} guidance={guidance} gamma={gamma} batch={b} device={device} dtype={args.dtype or 'fp32'} "
          f"threads={torch.get_num_threads()} capture_blocks={list(blocks)} tau={args.tau}")
    unit = "GPU MiB (allocated)" if device.type == "cuda" else "RSS MiB"
    # CPU s: process time over all threads, which other processes' load inflates far less than wall time
    print(f"| variant | median s/edit | min s/edit | median CPU s/edit | peak {unit} | over start | runs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        secs, cpus = [s for s, _, _ in runs], [c for _, c, _ in runs]
        peak = max(m.peak for _, _, m in runs)
        extra = max(m.extra for _, _, m in runs)
        print(f"| {name} | {statistics.median(secs) / b:.3f} | {min(secs) / b:.3f} | {statistics.median(cpus) / b:.3f} | "
              f"{peak:.0f} | {extra:.0f} | {len(secs)} |")

    p_secs = [s for s, _, _ in results["plain"]]
    h_secs = [s for s, _, _ in results["region-hold"]]
    p_med, h_med = statistics.median(p_secs), statistics.median(h_secs)
    print(f"region-hold overhead, end to end: {100 * (h_med - p_med) / p_med:+.2f}% (medians), "
          f"{100 * (min(h_secs) - min(p_secs)) / min(p_secs):+.2f}% (minimums); target < 5%")
    extra = _extra_work_per_step(model, ref, cond, blocks, args.tau, device)
    per_step = min(p_secs) / steps
    print(f"region-hold extra work per step (capture in {len(blocks)} blocks + filtered hold map), timed in isolation: "
          f"{extra * 1e3:.2f} ms of {per_step * 1e3:.1f} ms per step = {100 * extra / per_step:.2f}%")

    if args.before:
        rows = _agreement(samplers, model, ref, cond, uncond, micro, steps, guidance, gamma, blocks, args.tau)
        print(f"\nAgainst the released loop (tests/mgt/released_reference.py), batch 1, seed 0, {steps} steps:")
        print("| sampler | mode | decoded tokens re-masked | final tokens equal | steps with equal inputs |")
        print("|---|---|---:|---:|---:|")
        for name, mode, remasked, share, same in rows:
            print(f"| {name} | {mode} | {remasked} | {100 * share:.1f}% | {same}/{steps} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
