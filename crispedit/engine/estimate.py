"""What a build of N kept pairs will cost, from a measured sample: ``crispedit plan``.

Why from a sample and not from the stages' declarations: survival rates and seconds per item
depend on the data and the models, and only a build knows them. A finished build's summary
(or a K-item sample build) gives, per stage, inputs seen, outputs passed, seconds, GPU-seconds
and LLM usage; everything scales linearly with the number of source items, and the source
items needed for N kept pairs is N divided by the measured kept fraction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StageEstimate:
    name: str
    survival: float  # passed / seen in the sample (best-of-N stages below 1, generators above)
    items: float  # inputs this stage sees for the whole run
    cpu_hours: float
    gpu_hours: float
    usage: dict[str, float] = field(default_factory=dict)  # LLM requests, tokens, cost, scaled
    #: The stage's seconds per source item in the sample (every input it saw, fan-out and filters included):
    #: what ``execution.stages.NAME.seconds_per_item`` declares to size the pools.
    seconds_per_item: float = 0.0


@dataclass(frozen=True)
class Estimate:
    kept_wanted: int
    sampled_inputs: int
    sampled_kept: int
    inputs_needed: int
    stages: list[StageEstimate]
    cpus: float
    gpus: float
    wall_hours: float  # the bound: GPU-hours / GPUs or CPU-hours / CPUs, whichever is larger

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"for {self.kept_wanted} kept pairs: {self.inputs_needed} source items "
            f"(measured: {self.sampled_kept} kept of {self.sampled_inputs})",
            f"  {'stage':<24} {'survival':>8} {'items':>12} {'s/source':>8} {'CPU-h':>10} {'GPU-h':>10}  usage",
        ]
        for s in self.stages:
            usage = ", ".join(f"{k} {v:.4g}" for k, v in s.usage.items())
            out.append(f"  {s.name:<24} {s.survival:>8.3f} {s.items:>12.0f} {s.seconds_per_item:>8.3g} {s.cpu_hours:>10.4g} "
                       f"{s.gpu_hours:>10.4g}  {usage}")
        shape = f"{self.cpus:g} CPUs, {self.gpus:g} GPUs"
        out.append(f"wall time on {shape}: at least {self.wall_hours:.4g} h (every GPU and CPU busy; model loading not counted)")
        out.append("  (s/source is what execution.stages.NAME.seconds_per_item declares: the plan then splits the GPUs in proportion)")
        return out


def estimate(summary: dict[str, Any], kept_wanted: int, *, cpus: float, gpus: float) -> Estimate:
    """Scale a build's ``summary`` (its summary.json) to ``kept_wanted`` kept pairs on a cluster shape."""
    stages = summary.get("stages", {})
    source = stages.get("source", {})
    sampled_inputs = int(source.get("seen", 0))
    sampled_kept = int(summary.get("rows", 0))
    if sampled_inputs <= 0 or sampled_kept <= 0:
        raise ValueError(
            f"the sample kept {sampled_kept} of {sampled_inputs} source items: nothing to scale from (build a larger --sample)"
        )
    inputs = math.ceil(kept_wanted * sampled_inputs / sampled_kept)
    factor = inputs / sampled_inputs
    out = []
    for name, data in stages.items():
        seen = int(data.get("seen", 0))
        gpu_s = float(data.get("gpu_seconds", 0.0))
        cpu_s = max(0.0, float(data.get("seconds", 0.0)) - gpu_s)  # GPU-seconds are a stage's seconds on a GPU
        out.append(StageEstimate(
            name, (int(data.get("passed", 0)) / seen) if seen else 0.0, seen * factor,
            cpu_s * factor / 3600, gpu_s * factor / 3600,
            {k: float(v) * factor for k, v in sorted(data.get("usage", {}).items())},
            float(data.get("seconds", 0.0)) / sampled_inputs,
        ))
    gpu_h = sum(s.gpu_hours for s in out)
    cpu_h = sum(s.cpu_hours for s in out)
    if gpu_h and not gpus:
        wall = (gpu_h + cpu_h) / max(cpus, 1.0)  # the model stages run on the CPUs too
    else:
        wall = max(gpu_h / gpus if gpus else 0.0, cpu_h / max(cpus, 1.0))
    return Estimate(kept_wanted, sampled_inputs, sampled_kept, inputs, out, cpus, gpus, wall)
