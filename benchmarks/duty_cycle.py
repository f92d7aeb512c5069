"""Duty cycle on a simulated cluster: fake Ray GPUs, model stages that hold a GPU and sleep.

Ray is started with 4 (then 8) fake GPUs on this CPU machine, and a recipe of simulated model
stages from ``benchmarks.stages`` runs on the default Ray runner: an SDXL-like generator at
~2 s/item (an autoscaling pool that may take every GPU the others leave), a grounder at
~0.3 s/item, a CLIP-like scorer at ~0.05 s/item and an LLM-like judge at ~1.5 s latency for a
batch of 16 concurrent requests. The three fast stages share one GPU (0.25 each, the plan's
fractional GPUs). The bound is the simulated GPU-seconds (each stage's busy seconds times the
GPUs it holds) over the GPUs; the table prints wall time against it and each stage's busy
fraction (busy seconds / (wall x workers)).

    python benchmarks/duty_cycle.py [--gpus 4,8] [--items-per-gpu 12]   # from the repository root
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.stages, the plugin the recipe names

from crispedit.engine import build  # noqa: E402
from crispedit.recipe import load_plan  # noqa: E402

#: name -> (per_call_s, per_item_s, concurrency, batch size, num_gpus)
STAGES = {
    "generate": (0.0, 2.0, 1, 1, 1.0),
    "ground": (0.0, 0.3, 1, 4, 0.25),
    "clip_score": (0.0, 0.05, 1, 8, 0.25),
    "judge": (1.5, 0.0, 16, 16, 0.25),
}

RECIPE = """\
name: duty_cycle
plugins: [benchmarks.stages]
output: {{dir: out, shard_size: 4}}
execution:
  stall_timeout_s: 120
  stages:
{placement}
source: {{kind: empty, count: {items}}}
stages:
{stages}
"""


def recipe(gpus: int, items: int) -> str:
    stages, placement = [], []
    for name, (call, item, conc, batch, share) in STAGES.items():
        extra = ", make_images: true" if name == "generate" else ""
        stages.append(f"  - {{kind: simulated_model, name: {name}, per_call_s: {call}, per_item_s: {item}, concurrency: {conc}{extra}}}")
        fast = sum(s[4] for n, s in STAGES.items() if n != "generate")
        pool = f"min_actors: 1, max_actors: {int(gpus - fast)}" if name == "generate" else "concurrency: 1"
        placement.append(f"    {name}: {{num_gpus: {share}, batch_size: {batch}, {pool}}}")
    return RECIPE.format(placement="\n".join(placement), stages="\n".join(stages), items=items)


def run(gpus: int, items: int, work: Path) -> list[str]:
    import ray

    ray.init(num_cpus=4 * gpus, num_gpus=gpus, include_dashboard=False, logging_level="ERROR")
    try:
        path = work / f"duty_{gpus}.yaml"
        path.write_text(recipe(gpus, items), encoding="utf-8")
        started = time.perf_counter()
        result = build(load_plan(path, out=work / f"out_{gpus}"), runner="ray", progress=False)
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    stats = result.summary["stages"]
    gpu_seconds = sum(stats[n]["seconds"] * s[4] for n, s in STAGES.items())
    bound = gpu_seconds / gpus
    rows = [f"| {gpus} | {items} | {wall:.1f} | {bound:.1f} | {bound / wall:.2f} |"]
    for name, spec in STAGES.items():
        workers = int(gpus - sum(s[4] for n, s in STAGES.items() if n != "generate")) if name == "generate" else 1
        rows.append(f"|  | {name} ({spec[4]:g} GPU, {workers} max) | busy {stats[name]['seconds']:.1f} s | "
                    f"{stats[name]['seconds'] / (wall * workers):.2f} busy | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="4,8")
    parser.add_argument("--items-per-gpu", type=int, default=12)
    args = parser.parse_args()
    print("| fake GPUs | items / stage | wall s | bound s | bound / wall |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for gpus in (int(g) for g in args.gpus.split(",")):
            for row in run(gpus, args.items_per_gpu * gpus, Path(tmp)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
