"""Duty cycle on a simulated cluster: fake Ray GPUs, model stages that hold a GPU and sleep.

Ray is started with 4 (then 8) fake GPUs on this CPU machine, and told of 4 logical CPUs per
GPU (``--cpus-per-gpu``), as a real GPU node has many CPUs; only 2 cores do the work, which is
fine since the stages sleep. A recipe of simulated model stages (``simulated_model`` from
``benchmarks.stages``, traced here) runs on the default Ray runner: an SDXL-like generator at
2 s/item holding a whole GPU, and a grounder at 0.3 s/item, a CLIP-like scorer at 0.05 s/item
and an LLM-like judge at 1.5 s for a batch of 16 concurrent requests, each declared at 0.25 GPU.

The recipe says nothing about pool sizes: the engine's plan decides them. Variants: ``auto``
(no costs declared: each pool keeps one actor), ``whole`` (each stage's ``seconds_per_item``
declared, as ``crispedit plan --sample`` measures it, and ``share_gpus: false``: whole GPUs
split in proportion) and ``shared`` (the same with sharing: the generator on every GPU, the
light stages beside it).

Ray's GPU fractions only place actors, so the fake GPUs are time-shared here: each call holds
its stage's fraction of work (1 for the generator, 0.25 for the others) of its Ray GPU id's
lock file while it sleeps, and a co-located light stage waits for the generator's call and the
other way round. The bound is the simulated GPU-seconds (each stage's traced sleep seconds times
its fraction of work) over the GPUs; bound / wall is the fraction of the GPUs' time spent
working. "start-up and tail left out" is the same ratio between the generator's first call and
the end of its last. "whole-GPU ceiling" is the best steady-state ratio with whole-GPU
generators beside at least one actor of each light stage; "plan's steady state" is the same
for the pool sizes the plan chose (no start-up, no tail). From the trace of every call: the
actors each stage ran and when each stage's first call began.

    python benchmarks/duty_cycle.py [--gpus 4,8] [--items-per-gpu 40] [--variants auto,whole,shared]
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
  share_gpus: {share}
  stages:
{placement}
source: {{kind: empty, count: {items}}}
stages:
{stages}
"""

#: variant -> (declare seconds_per_item, share_gpus)
VARIANTS = {"auto": (False, True), "whole": (True, False), "shared": (True, True)}


def seconds_per_item(name: str) -> float:
    call, item, conc, batch, _ = STAGES[name]
    return (call + item * math.ceil(batch / conc)) / batch


def recipe(items: int, trace: Path, variant: str) -> str:
    costed, share = VARIANTS[variant]
    stages, placement = [], []
    for name, (call, item, conc, batch, gpus) in STAGES.items():
        extra = ", make_images: true" if name == "generate" else ""
        stages.append(f"  - {{kind: traced_model, name: {name}, per_call_s: {call}, per_item_s: {item}, "
                      f"concurrency: {conc}, device_share: {gpus}, trace_dir: '{trace}'{extra}}}")
        cost = f", seconds_per_item: {seconds_per_item(name):.4f}" if costed else ""
        placement.append(f"    {name}: {{num_gpus: {gpus}, batch_size: {batch}{cost}}}")
    return RECIPE.format(placement="\n".join(placement), stages="\n".join(stages), items=items, share=str(share).lower())


def steady(gpus: int, counts: dict[str, int]) -> float:
    """bound / wall in steady state with these actor counts: no start-up, no ramp, no tail.

    The rate is the slowest pool's (actors / seconds per item) or, when stages time-share the
    GPUs, the GPUs' seconds over the GPU-seconds per item, whichever is lower.
    """
    work = sum(seconds_per_item(n) * STAGES[n][4] for n in STAGES)
    rate = min([counts[n] / seconds_per_item(n) for n in STAGES] + [gpus / work])
    return rate * work / gpus


def whole_ceiling(gpus: int) -> float:
    """The best :func:`steady` with whole-GPU generators beside at least one actor of each light stage."""
    best = 0.0
    for extra in range(0, 4):
        for name in (n for n in STAGES if n != "generate"):
            trial = {n: 1 for n in STAGES if n != "generate"} | {name: 1 + extra}
            rest = gpus - sum(STAGES[n][4] * c for n, c in trial.items())
            if rest >= 1:
                best = max(best, steady(gpus, trial | {"generate": int(rest + 1e-9)}))
    return best


def read_trace(trace: Path) -> dict[str, list[tuple[int, float, float]]]:
    calls: dict[str, list[tuple[int, float, float]]] = {n: [] for n in STAGES}
    for path in trace.glob("*.trace"):
        name, pid = path.stem.rsplit(".", 1)
        for line in path.read_text().splitlines():
            t0, t1 = map(float, line.split())
            calls[name].append((int(pid), t0, t1))
    return calls


def run(gpus: int, items: int, work: Path, variant: str, cpus_per_gpu: int) -> list[str]:
    import ray

    from crispedit.engine import build
    from crispedit.engine.plan import resource_plan
    from crispedit.recipe import load_plan

    trace = work / f"trace_{variant}_{gpus}"
    trace.mkdir()
    path = work / f"duty_{variant}_{gpus}.yaml"
    path.write_text(recipe(items, trace, variant), encoding="utf-8")
    plan = load_plan(path, out=work / f"out_{variant}_{gpus}")
    ray.init(num_cpus=cpus_per_gpu * gpus, num_gpus=gpus, include_dashboard=False, logging_level="ERROR")
    try:
        fitted = resource_plan(plan, ray.cluster_resources(), ray.nodes())
        started = time.time()
        result = build(plan, runner="ray", progress=False)
        wall = time.time() - started
    finally:
        ray.shutdown()
    assert result.summary["complete"], result.failed
    pools = {s.label: s for s in fitted.steps if s.pool}
    calls = read_trace(trace)
    busy = {n: sum(t1 - t0 for _, t0, t1 in calls[n]) for n in STAGES}
    bound = sum(busy[n] * STAGES[n][4] for n in STAGES) / gpus
    first = min(t0 for _, t0, _ in calls["generate"]) - started
    tail = started + wall - max(t1 for _, _, t1 in calls["generate"])
    lo, hi = started + first, started + wall - tail  # the generator's first call to its last: start-up and tail left out
    inside = sum(max(0.0, min(t1, hi) - max(t0, lo)) * STAGES[n][4] for n in STAGES for _, t0, t1 in calls[n])
    fixed = all(pools[n].actors[0] == pools[n].actors[1] for n in STAGES)
    planned = f"{steady(gpus, {n: pools[n].actors[1] for n in STAGES}):.2f}" if fixed else "-"
    rows = [f"| {gpus} | {variant} | {items} | {wall:.1f} | {bound:.1f} | **{bound / wall:.2f}** | {inside / (gpus * (hi - lo)):.2f} | "
            f"{whole_ceiling(gpus):.2f} | {planned} | {first:.1f} | {tail:.1f} |"]
    for name, spec in STAGES.items():
        low, high = pools[name].actors
        ran = len({pid for pid, _, _ in calls[name]})
        size = f"{low}" if low == high else f"{low}-{high}"
        began = min(t0 for _, t0, _ in calls[name]) - started
        setups = sorted(float(p.read_text().split()[0]) - started for p in trace.glob(f"{name}.*.setup"))
        ready = f"actors set up at {', '.join(f'{t:.0f}' for t in setups)} s; " if setups else ""
        rows.append(f"|  | {name} ({spec[4]:g} GPU of work; Ray {pools[name].num_gpus:.3g} GPU) | {size} actors, ran {ran} | "
                    f"busy {busy[name]:.1f} s | | {busy[name] / (wall * max(1, ran)):.2f} busy | | | | {ready}first call {began:.1f} s | |")
    return rows


if __name__ != "__main__":  # imported as the recipe's plugin (driver and Ray workers): the traced stage kind
    import fcntl

    from benchmarks.stages import SimulatedModelStage, SimulatedParams
    from crispedit.core.stage import Stage, register_stage

    #: A fake GPU's time in quarters: an actor holds round(device_share * SLOTS) of them while it works.
    SLOTS = 4
    #: Time-slicing: a call works in slices of SLICE_S, giving the device up for GAP_S after each (not counted as work).
    SLICE_S, GAP_S = 0.1, 0.001

    class TracedParams(SimulatedParams):
        trace_dir: str
        device_share: float = 1.0

    @register_stage
    class TracedModelStage(SimulatedModelStage, Stage[TracedParams]):
        """``simulated_model`` that time-shares its fake GPU and traces its work.

        Ray's GPU fractions only place actors; two actors on one device share its time. So a
        call sleeps its time in slices of ``SLICE_S``, each holding ``device_share`` of its
        device (quarters of a lock file per Ray GPU id, POSIX byte-range locks): a co-located
        light stage and the generator take turns, as kernels of two processes do on a real GPU
        (at a coarser grain). Each slice of work goes to TRACE_DIR/NAME.PID.trace as "start end".
        """

        kind = "traced_model"
        _fd: int | None = None

        def setup(self) -> None:
            super().setup()
            with open(os.path.join(self.params.trace_dir, f"{self.name}.{os.getpid()}.setup"), "a") as f:
                f.write(f"{time.time()}\n")

        def _device(self) -> int | None:
            import ray

            ids = ray.get_gpu_ids() if ray.is_initialized() else []
            if not ids:
                return None
            if self._fd is None:
                path = os.path.join(self.params.trace_dir, f"gpu{ids[0]}.lock")
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT)
            return self._fd

        def _acquire(self, fd: int) -> tuple[int, int]:
            need = max(1, round(self.params.device_share * SLOTS))
            if need >= SLOTS:
                fcntl.lockf(fd, fcntl.LOCK_EX, SLOTS, 0)
                return SLOTS, 0
            for start in range(0, SLOTS - need + 1):
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, need, start)
                    return need, start
                except OSError:
                    continue
            start = os.getpid() % (SLOTS - need + 1)
            fcntl.lockf(fd, fcntl.LOCK_EX, need, start)
            return need, start

        def __call__(self, batch: list) -> list:
            p = self.params
            work = p.per_call_s + p.per_item_s * math.ceil(len(batch) / p.concurrency)
            fd = self._device()
            slices = []
            while len(slices) * SLICE_S < work - 1e-9:
                step = min(SLICE_S, work - len(slices) * SLICE_S)
                held = self._acquire(fd) if fd is not None else None
                began = time.time()
                time.sleep(step)
                slices.append((began, time.time()))
                if fd is not None and held is not None:
                    fcntl.lockf(fd, fcntl.LOCK_UN, *held)
                    time.sleep(GAP_S)  # lets a co-located actor waiting on the lock take its turn
            with open(os.path.join(p.trace_dir, f"{self.name}.{os.getpid()}.trace"), "a") as f:
                f.writelines(f"{t0} {t1}\n" for t0, t1 in slices)
            self.params = p.model_copy(update={"per_call_s": 0.0, "per_item_s": 0.0})
            try:
                return super().__call__(batch)  # the images, without a second sleep
            finally:
                self.params = p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="4,8")
    parser.add_argument("--items-per-gpu", type=int, default=40)
    parser.add_argument("--cpus-per-gpu", type=int, default=4, help="logical CPUs Ray is told of per fake GPU")
    parser.add_argument("--variants", default="auto,whole,shared")
    args = parser.parse_args()
    print("| fake GPUs | plan | items | wall s | bound s | bound / wall | same, start-up and tail left out | whole-GPU ceiling | "
          "plan's steady state | start-up s | tail s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for gpus in (int(g) for g in args.gpus.split(",")):
            for variant in args.variants.split(","):
                for row in run(gpus, args.items_per_gpu * gpus, Path(tmp), variant, args.cpus_per_gpu):
                    print(row, flush=True)


if __name__ == "__main__":
    main()
