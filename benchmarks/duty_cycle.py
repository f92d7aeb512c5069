"""Duty cycle on a simulated cluster: fake Ray GPUs, model stages that hold a GPU and sleep.

Ray is started with 4 (then 8) fake GPUs on this CPU machine, and told of 4 logical CPUs per
GPU (``--cpus-per-gpu``), as a real GPU node has many CPUs; only 2 cores do the work, which is
fine since the stages sleep. A recipe of simulated model stages (``simulated_model`` from
``benchmarks.stages``, traced here) runs on the default Ray runner: an SDXL-like generator at
2 s/item holding a whole GPU, and a grounder at 0.3 s/item, a CLIP-like scorer at 0.05 s/item
and an LLM-like judge at 1.5 s for a batch of 16 concurrent requests, each declared at 0.25 GPU.

The recipe says nothing about pool sizes: the engine's plan decides them. Two variants run:
``auto`` (no costs declared: autoscaling pools up to what the GPUs allow) and ``costed``
(each stage's ``seconds_per_item`` declared, as ``crispedit plan --sample`` measures it: the
plan splits the GPUs in proportion at a fixed size).

The bound is the simulated GPU-seconds (each stage's busy seconds times the GPU share each of
its actors holds) over the GPUs; bound / wall is the fraction of the GPUs' capacity held by a
busy actor. "ceiling" is the best bound / wall any plan can reach with these GPU shares in
whole actors (the slow stage takes whole GPUs, the three light stages at least one actor
each), and "plan's ceiling" the same for the pool sizes the plan chose (no start-up, no ramp).
From the trace of every call: the actors each stage ran, start-up (build start to the first
generator call), tail (the last generator call's end to the build's end).

    python benchmarks/duty_cycle.py [--gpus 4,8] [--items-per-gpu 40] [--variants auto,costed]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.stages, the plugin the recipe names

#: name -> (per_call_s, per_item_s, concurrency, batch size, num_gpus)
STAGES = {
    "generate": (0.0, 2.0, 1, 1, 1.0),
    "ground": (0.0, 0.3, 1, 4, 0.25),
    "clip_score": (0.0, 0.05, 1, 8, 0.25),
    "judge": (1.5, 0.0, 16, 16, 0.25),
}

RECIPE = """\
name: duty_cycle
plugins: [benchmarks.stages, benchmarks.duty_cycle]
output: {{dir: out, shard_size: 4}}
execution:
  stall_timeout_s: 120
  stages:
{placement}
source: {{kind: empty, count: {items}}}
stages:
{stages}
"""


def seconds_per_item(name: str) -> float:
    call, item, conc, batch, _ = STAGES[name]
    return (call + item * math.ceil(batch / conc)) / batch


def recipe(items: int, trace: Path, costed: bool) -> str:
    stages, placement = [], []
    for name, (call, item, conc, batch, share) in STAGES.items():
        extra = ", make_images: true" if name == "generate" else ""
        stages.append(f"  - {{kind: traced_model, name: {name}, per_call_s: {call}, per_item_s: {item}, "
                      f"concurrency: {conc}, trace_dir: '{trace}'{extra}}}")
        cost = f", seconds_per_item: {seconds_per_item(name):.4f}" if costed else ""
        placement.append(f"    {name}: {{num_gpus: {share}, batch_size: {batch}{cost}}}")
    return RECIPE.format(placement="\n".join(placement), stages="\n".join(stages), items=items)


def ceiling(gpus: int, counts: dict[str, int] | None = None) -> float:
    """bound / wall in steady state for these actor counts (default: the best whole-actor split)."""
    if counts is None:
        light = {n: 1 for n in STAGES if n != "generate"}
        best = 0.0
        for extra in range(0, 4):  # a light stage with more than one actor, when it limits the rate
            for name in light:
                trial = dict(light, **{name: 1 + extra})
                rest = gpus - sum(STAGES[n][4] * c for n, c in trial.items())
                if rest >= 1:
                    best = max(best, ceiling(gpus, dict(trial, generate=int(rest / STAGES["generate"][4] + 1e-9))))
        return best
    rate = min(counts[n] / seconds_per_item(n) for n in STAGES)
    return rate * sum(seconds_per_item(n) * STAGES[n][4] for n in STAGES) / gpus


def read_trace(trace: Path) -> dict[str, list[tuple[int, float, float]]]:
    calls: dict[str, list[tuple[int, float, float]]] = {n: [] for n in STAGES}
    for path in trace.glob("*.trace"):
        name, pid = path.stem.rsplit(".", 1)
        for line in path.read_text().splitlines():
            t0, t1 = map(float, line.split())
            calls[name].append((int(pid), t0, t1))
    return calls


def run(gpus: int, items: int, work: Path, costed: bool, cpus_per_gpu: int) -> list[str]:
    import ray

    from crispedit.engine import build
    from crispedit.engine.plan import resource_plan
    from crispedit.recipe import load_plan

    variant = "costed" if costed else "auto"
    trace = work / f"trace_{variant}_{gpus}"
    trace.mkdir()
    path = work / f"duty_{variant}_{gpus}.yaml"
    path.write_text(recipe(items, trace, costed), encoding="utf-8")
    plan = load_plan(path, out=work / f"out_{variant}_{gpus}")
    ray.init(num_cpus=cpus_per_gpu * gpus, num_gpus=gpus, include_dashboard=False, logging_level="ERROR")
    try:
        fitted = resource_plan(plan, ray.cluster_resources(), ray.nodes())
        started = time.time()
        result = build(plan, runner="ray", progress=False)
        wall = time.time() - started
    finally:
        ray.shutdown()
    stats = result.summary["stages"]
    pools = {s.label: s.actors for s in fitted.steps if s.pool}
    gpu_seconds = sum(stats[n]["seconds"] * s[4] for n, s in STAGES.items())
    bound = gpu_seconds / gpus
    calls = read_trace(trace)
    first = min(t0 for _, t0, _ in calls["generate"]) - started
    tail = started + wall - max(t1 for _, _, t1 in calls["generate"])
    planned = ceiling(gpus, {n: pools[n][1] for n in STAGES}) if all(pools[n][0] == pools[n][1] for n in STAGES) else None
    rows = [f"| {gpus} | {variant} | {items} | {wall:.1f} | {bound:.1f} | **{bound / wall:.2f}** | {ceiling(gpus):.2f} | "
            f"{'-' if planned is None else f'{planned:.2f}'} | {first:.1f} | {tail:.1f} |"]
    for name, spec in STAGES.items():
        low, high = pools[name]
        ran = len({pid for pid, _, _ in calls[name]})
        rows.append(f"|  | {name} ({spec[4]:g} GPU) | actors {low}-{high}, ran {ran} | busy {stats[name]['seconds']:.1f} s | | "
                    f"{stats[name]['seconds'] / (wall * max(1, ran)):.2f} busy | | | | |")
    return rows


if __name__ != "__main__":  # imported as the recipe's plugin (driver and Ray workers): the traced stage kind
    from benchmarks.stages import SimulatedModelStage, SimulatedParams
    from crispedit.core.stage import Stage, register_stage

    class TracedParams(SimulatedParams):
        trace_dir: str

    @register_stage
    class TracedModelStage(SimulatedModelStage, Stage[TracedParams]):
        """``simulated_model`` that appends each call's start and end to TRACE_DIR/NAME.PID.trace."""

        kind = "traced_model"

        def __call__(self, batch: list) -> list:
            began = time.time()
            out = super().__call__(batch)
            with open(os.path.join(self.params.trace_dir, f"{self.name}.{os.getpid()}.trace"), "a") as f:
                f.write(f"{began} {time.time()}\n")
            return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="4,8")
    parser.add_argument("--items-per-gpu", type=int, default=40)
    parser.add_argument("--cpus-per-gpu", type=int, default=4, help="logical CPUs Ray is told of per fake GPU")
    parser.add_argument("--variants", default="auto,costed")
    args = parser.parse_args()
    print("| fake GPUs | plan | items | wall s | bound s | bound / wall | ceiling | plan's ceiling | start-up s | tail s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for gpus in (int(g) for g in args.gpus.split(",")):
            for variant in args.variants.split(","):
                for row in run(gpus, args.items_per_gpu * gpus, Path(tmp), variant == "costed", args.cpus_per_gpu):
                    print(row, flush=True)


if __name__ == "__main__":
    main()
