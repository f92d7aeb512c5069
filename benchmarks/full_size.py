"""Full-size smoke runs on the CPU: each model stage on the released architecture, random weights,
a small resolution and 2 steps; seconds and peak memory per stage.

    python benchmarks/full_size.py                    # every stage, one subprocess each
    python benchmarks/full_size.py --only sdxl_p2p    # one stage, in this process
    python benchmarks/full_size.py --side 128 --steps 2 --max-rss-gib 16

The models and the stage calls are tests/helpers/full_size.py's (the same the `fullsize` tests
run). Each stage runs in its own process, so its peak RSS (getrusage's ru_maxrss) is its own;
a watchdog ends a stage whose RSS passes --max-rss-gib (other work shares the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 1024**3
OVER_LIMIT = 3


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def watchdog(limit_gib: float) -> None:
    """End this process (exit 3) when its resident memory passes the limit."""

    def watch() -> None:
        while True:
            if rss_bytes() > limit_gib * GIB:
                print(json.dumps({"error": f"RSS above {limit_gib} GiB: stopped"}), flush=True)
                os._exit(OVER_LIMIT)
            time.sleep(0.25)

    threading.Thread(target=watch, daemon=True).start()


def run_one(name: str, side: int, steps: int, limit_gib: float) -> dict:
    import torch

    from tests.helpers.full_size import STAGES

    watchdog(limit_gib)
    torch.manual_seed(0)
    smoke = STAGES[name](side, steps)
    return {
        "stage": name, "parameters": smoke.parameters, "load_s": round(smoke.load_s, 1), "run_s": round(smoke.run_s, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2),
        "result": "; ".join(describe(out) for out in smoke.outputs),
    }


def describe(output: object) -> str:
    """What a stage produced: an image's shape, a sample's new image, mask or scores (finite or not)."""
    import numpy as np

    if isinstance(output, np.ndarray):
        return f"image {output.shape[0]}x{output.shape[1]}"
    if not output.alive:  # type: ignore[attr-defined]
        return f"rejected: {output.reject.reason}"  # type: ignore[attr-defined]
    parts = []
    if output.target_image is not None:  # type: ignore[attr-defined]
        parts.append(f"target {output.target_image.shape[0]}x{output.target_image.shape[1]}")  # type: ignore[attr-defined]
    if output.mask is not None:  # type: ignore[attr-defined]
        parts.append(f"mask {(output.mask > 127).mean():.0%} of the image")  # type: ignore[attr-defined]
    scores = output.scores  # type: ignore[attr-defined]
    if scores:
        parts.append(f"{len(scores)} scores, {sum(v is not None and np.isfinite(v) for v in scores.values())} finite")
    return ", ".join(parts)


def main() -> None:
    from tests.helpers.full_size import STAGES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(STAGES), help="one stage, in this process (prints one JSON row)")
    p.add_argument("--side", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--steps", type=int, default=2, help="denoising steps (default 2)")
    p.add_argument("--max-rss-gib", type=float, default=16.0, help="stop a stage above this resident memory")
    args = p.parse_args()
    if args.only:
        print(json.dumps(run_one(args.only, args.side, args.steps, args.max_rss_gib)), flush=True)
        return
    rows = []
    for name in STAGES:
        command = [sys.executable, __file__, "--only", name, "--side", str(args.side), "--steps", str(args.steps),
                   "--max-rss-gib", str(args.max_rss_gib)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        row = json.loads(lines[-1]) if lines else {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
        rows.append({"stage": name, **row})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {__import__('torch').__version__}, {args.side} px, {args.steps} steps, bf16")
    print("| stage | parameters | load s | run s | peak RSS GiB | result |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['stage']} | | | | | {row['error']} |")
        else:
            print(f"| {row['stage']} | {row['parameters'] / 1e9:.2f}B | {row['load_s']} | {row['run_s']} | {row['peak_rss_gib']} | "
                  f"{row['result']} |")


if __name__ == "__main__":
    main()
