"""The resource plan: what every Ray step of a build reserves, decided before any work starts.

Why a plan and not per-stage numbers: Ray Data starts the minimum actors of every actor pool
as soon as the dataset executes, outside its own budget, and Ray Core never takes a CPU back
from a live actor. A task step (or a commit task) that asks for CPUs those actors already hold
waits in the raylet's queue forever while Ray Data counts it as running: the build hangs
without a word. So the plan sizes every request together, against the whole cluster, so that
one worker of every step can exist at the same time:

* GPUs and memory are real: requests that do not fit are refused here, naming the stage;
* CPUs are logical: Ray only counts them, so requests are scaled down (never up) until the
  minimum of every step fits inside what Ray Data's reservation hands out (see
  :func:`reserved`), with the commit tasks' share kept out of Ray Data's budget altogether.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

#: CPUs a commit task asks for (it only concatenates and renames files).
COMMIT_CPUS = 0.25
#: Ray accounts resources in units of 1/10000; requests are rounded down to that grain.
_GRAIN = 1e-4


class PlanError(ValueError):
    """A recipe the cluster cannot run: a stage wants GPUs or memory that are not there."""


@dataclass(frozen=True)
class StepReservation:
    """One Ray step: an actor pool (``pool``) or a task step, and what one worker of it asks for."""

    names: tuple[str, ...]
    pool: bool
    num_cpus: float
    num_gpus: float
    memory_gb: float | None
    actors: tuple[int, int] = (1, 1)
    declared_cpus: float = 1.0
    #: GPU memory one worker holds, in GiB (None: not declared, not checked).
    gpu_memory_gb: float | None = None
    #: Seconds one item costs one worker (declared or measured): the weight of the pool sizing.
    seconds_per_item: float | None = None
    #: The recipe left the pool's size to the plan (no concurrency, min_actors or max_actors).
    auto: bool = False

    @property
    def label(self) -> str:
        return "+".join(self.names)

    @property
    def workers(self) -> tuple[int, int]:
        """Workers the step holds at least and at most (a task step: one at least, unbounded)."""
        return self.actors if self.pool else (1, 0)

    def minimum(self) -> tuple[float, float, float]:
        """CPUs, GPUs and GiB the step holds with its fewest workers."""
        n = self.workers[0]
        return self.num_cpus * n, self.num_gpus * n, (self.memory_gb or 0.0) * n

    def maximum(self) -> tuple[float, float, float]:
        """What Ray Data lets the step grow to (inf: a task step without a cap)."""
        inf = float("inf")
        if not self.pool:
            return (inf if self.num_cpus else 0.0), (inf if self.num_gpus else 0.0), (inf if self.memory_gb else 0.0)
        n = self.actors[1]
        return self.num_cpus * n, self.num_gpus * n, (self.memory_gb or 0.0) * n


@dataclass(frozen=True)
class ResourcePlan:
    cpus: float
    gpus: float
    memory_gb: float
    steps: tuple[StepReservation, ...]
    commit_cpus: float
    cpu_scale: float
    gpu_scale: float = 1.0
    #: Memory of one GPU in GiB the sharing check used (None: unknown, not checked).
    gpu_memory_gb: float | None = None
    #: The slow stage has an actor on every GPU and the lighter model stages time-share GPUs beside it.
    colocated: bool = False

    def lines(self) -> list[str]:
        """The plan as a user reads it (``crispedit -v build``, ``crispedit plan``)."""
        head = f"resource plan for {self.cpus:g} CPUs, {self.gpus:g} GPUs, {self.memory_gb:.1f} GiB"
        if self.gpu_memory_gb:
            head += f" ({self.gpu_memory_gb:g} GiB per GPU)"
        if self.cpu_scale < 1:
            head += f" (CPU requests scaled by {self.cpu_scale:.3f} so that every step can run at once)"
        if self.gpu_scale < 1:
            head += f" (GPU requests scaled by {self.gpu_scale:.3f}: the model stages share the GPUs)"
        if self.colocated:
            head += " (the slowest model stage on every GPU, the lighter ones beside it: they time-share the GPUs)"
        out = [head]
        for s in self.steps:
            low, high = s.workers
            workers = f"{low}-{high} actors" if s.pool and high != low else f"{low} actor(s)" if s.pool else "tasks"
            mem = f", {s.memory_gb:g} GiB" if s.memory_gb else ""
            mem += f", {s.gpu_memory_gb:g} GiB GPU memory" if s.gpu_memory_gb else ""
            out.append(f"  {s.label:<36} {workers:<12} {s.num_cpus:.4g} CPU, {s.num_gpus:g} GPU{mem} each")
        out.append(f"  {'commit':<36} {'tasks':<12} {self.commit_cpus:.4g} CPU each (outside Ray Data's budget)")
        unused = self.gpus - sum(s.num_gpus * s.workers[1] for s in self.steps if s.pool)
        uncosted = [s.label for s in self.steps if s.pool and s.auto and s.num_gpus and not s.seconds_per_item]
        if unused > 1e-6 and uncosted:
            out.append(
                f"  {unused:.4g} of the {self.gpus:g} GPUs stay unused: declare execution.stages.NAME.seconds_per_item for "
                f"{', '.join(uncosted)} (`crispedit plan --sample K` prints it as s/source) and the plan sizes the pools to use them"
            )
        return out


def reserved(steps: list[StepReservation], limits: tuple[float, float, float], ratio: float) -> tuple[float, float, float]:
    """What Ray Data 2.60's ReservationOpResourceAllocator sets aside in total for these steps.

    Each eligible operator reserves max(ratio * limit / n, its minimum), capped at its maximum;
    an operator whose reservation no longer fits in what is left gets no CPU or GPU reserved and
    starves until the operators before it finish. The plan keeps this total within the limits.
    """
    n = max(1, len(steps))
    total = [0.0, 0.0, 0.0]
    for step in steps:
        for k, (low, high) in enumerate(zip(step.minimum(), step.maximum(), strict=True)):
            total[k] += min(max(ratio * limits[k] / n, low), high)
    return total[0], total[1], total[2]


def make_plan(
    steps: list[StepReservation],
    cpus: float,
    gpus: float,
    memory_gb: float,
    *,
    node_cpus: float | None = None,
    node_gpus: float | None = None,
    ratio: float = 0.5,
    commit_cpus: float = COMMIT_CPUS,
    share_gpus: bool = True,
    gpu_memory_gb: float | None = None,
) -> ResourcePlan:
    """Fit the steps to a cluster; raise :class:`PlanError` when GPUs or memory cannot fit.

    ``steps`` carry the declared requests (already without GPUs when the cluster has none).
    ``node_cpus``/``node_gpus`` are the largest node's: one worker must fit on one node.
    ``gpu_memory_gb`` is one GPU's memory; when given, actors that may share a GPU must fit in it.
    """
    node_cpus = cpus if node_cpus is None else node_cpus
    node_gpus = gpus if node_gpus is None else node_gpus
    gpu_scale = _gpu_share(steps, gpus, node_gpus) if share_gpus else 1.0
    if gpu_scale < 1:
        steps = [replace(s, num_gpus=_floor(s.num_gpus * gpu_scale)) for s in steps]
    _check_gpus(steps, gpus, node_gpus)
    sized = size_pools(steps, gpus, colocate=share_gpus)
    if gpu_memory_gb:
        try:
            check_gpu_memory(sized, gpu_memory_gb)
        except PlanError:
            if sized == (sized := size_pools(steps, gpus, colocate=False)):
                raise
            check_gpu_memory(sized, gpu_memory_gb)  # the light stages beside the heavy one do not fit: whole GPUs
    colocated = sized != size_pools(steps, gpus, colocate=False)
    steps = sized
    _check_memory(steps, memory_gb)
    commit_cpus = min(commit_cpus, cpus / (len(steps) + 1))
    limit = cpus - commit_cpus  # what Ray Data may hand out (exclude_resources keeps the rest)
    limits = (limit, gpus, memory_gb)

    def scaled(scale: float) -> list[StepReservation]:
        return [replace(s, num_cpus=_floor(min(s.declared_cpus * scale, node_cpus))) for s in steps]

    if reserved(scaled(1.0), limits, ratio)[0] <= limit:
        scale = 1.0
    else:  # the total is monotone in the scale and below the limit at 0 (ratio < 1): bisect
        low, high = 0.0, 1.0
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if reserved(scaled(mid), limits, ratio)[0] <= limit * (1 - 1e-6) else (low, mid)
        scale = low
    planned = scaled(scale)
    for s in planned:
        if s.declared_cpus and s.num_cpus < _GRAIN:
            raise PlanError(
                f"stage {s.label!r} cannot get a share of the cluster's {cpus:g} CPUs next to the other "
                f"{len(steps) - 1} steps: run on more CPUs or with fewer actors"
            )
    return ResourcePlan(cpus, gpus, memory_gb, tuple(planned), _floor(commit_cpus), scale, gpu_scale, gpu_memory_gb, colocated)


def _gpu_share(steps: list[StepReservation], gpus: float, node_gpus: float) -> float:
    """The factor that fits the pools' minimum GPU workers onto the cluster's GPUs (1: they fit as declared).

    Sharing is fractional ``num_gpus``: Ray packs several model actors onto one device, each
    holding its own models, so the device's memory must hold them all (the recipe's tiny twins
    always do; for real models, set per-stage ``num_gpus`` and check the device's memory). A
    worker that wants more than one node's GPUs is not shared; :func:`_check_gpus` refuses it.
    """
    need = sum(s.num_gpus * s.workers[0] for s in steps)
    if not gpus or need <= gpus + 1e-9 or any(s.num_gpus > node_gpus + 1e-9 for s in steps):
        return 1.0
    return gpus / need


def _check_gpus(steps: list[StepReservation], gpus: float, node_gpus: float) -> None:
    held = 0.0
    holders: list[str] = []
    for s in steps:
        if not s.num_gpus:
            continue
        if s.num_gpus > node_gpus + 1e-9:
            raise PlanError(f"stage {s.label!r} needs {s.num_gpus:g} GPUs per worker, but no node has more than {node_gpus:g}")
        need = s.num_gpus * s.workers[0]
        if held + need > gpus + 1e-9:
            others = f" ({', '.join(holders)} hold {held:g})" if holders else ""
            raise PlanError(
                f"stage {s.label!r} needs {need:g} GPU(s) for {s.workers[0]} actor(s), but only {max(0.0, gpus - held):g} "
                f"of the cluster's {gpus:g} GPUs are left{others}: give the model stages fractional num_gpus "
                f"(execution.stages.NAME.num_gpus: 0.5 shares a GPU) or run on more GPUs"
            )
        held += need
        holders.append(s.label)


def _check_memory(steps: list[StepReservation], memory_gb: float) -> None:
    held = 0.0
    for s in steps:
        need = s.minimum()[2]
        if need and held + need > memory_gb + 1e-9:
            raise PlanError(
                f"stage {s.label!r} reserves {need:g} GiB of memory, but only {max(0.0, memory_gb - held):.1f} "
                f"of the cluster's {memory_gb:.1f} GiB are left for it: lower its memory_gb or add memory"
            )
        held += need


def _floor(value: float) -> float:
    return int(value / _GRAIN) * _GRAIN


def size_pools(steps: list[StepReservation], gpus: float, *, colocate: bool = True) -> list[StepReservation]:
    """Actor counts for the GPU pools whose size the recipe left to the plan.

    One actor per model stage leaves most GPUs of a large node idle, and an autoscaling pool
    that grows only when its queue backs up reaches its size late (or never, when its budget
    went to the pools that started first). So: when every such pool declares (or a sample
    measured) its seconds per item, the GPUs are split in proportion to each pool's GPU-seconds
    per item, at a fixed size from the start: every lighter pool gets the actors it needs to
    keep up with that rate (rounded up, at least one) and the heaviest takes the rest, so the
    GPUs go to the slow stage and no stage waits on a lighter one. A pool without a cost keeps
    one actor: Ray Data 2.60 splits the GPUs it does not reserve evenly over every operator, so
    an autoscaling pool does not grow past its own reservation (measured: a 1-3 actor generator
    pool beside three 1-10 actor pools ran one actor for the whole build, see
    benchmarks/RESULTS.md), and :meth:`ResourcePlan.lines` says which GPUs stay unused and why.

    Whole GPUs waste what the lighter pools leave of the GPUs they sit on (on 4 GPUs, three
    quarter-GPU stages leave the generator three GPUs). With ``colocate`` (the recipe's
    ``share_gpus``), when it is faster the slowest stage gets an actor on every GPU and the
    lighter actors time-share GPUs beside it (see :func:`_colocated`).
    """
    auto = [i for i, s in enumerate(steps) if s.pool and s.auto and s.num_gpus > 0]
    if not auto or gpus <= 0:
        return steps
    out = list(steps)
    held = sum(s.num_gpus * s.workers[0] for i, s in enumerate(steps) if i not in auto)
    costed = [i for i in auto if steps[i].seconds_per_item]
    free = gpus - held - sum(steps[i].num_gpus for i in auto if i not in costed)  # the uncosted pools' one actor
    if costed:
        shares = [steps[i].num_gpus for i in costed]
        seconds = [float(steps[i].seconds_per_item or 0.0) for i in costed]
        counts = _split(shares, seconds, free)
        if colocate and len(costed) == len(auto) > 1 and not held:
            shares, counts = _colocated(shares, seconds, counts, gpus)
        for i, g, n in zip(costed, shares, counts, strict=True):
            out[i] = replace(steps[i], num_gpus=g, actors=(n, n))
    return out


def _split(shares: list[float], seconds: list[float], free: float) -> list[int]:
    """Actors per pool for pools of these GPU shares and seconds per item on ``free`` GPUs."""
    heavy = max(range(len(shares)), key=lambda k: shares[k] * seconds[k])
    rate = free / sum(g * t for g, t in zip(shares, seconds, strict=True))  # items/s with every GPU busy
    counts = [1] * len(shares)
    for _ in range(3):  # the heaviest pool's whole actors set the real rate; the others need only keep up with it
        for k in range(len(shares)):
            if k != heavy:
                counts[k] = max(1, math.ceil(rate * seconds[k] - 1e-6))
        rest = free - sum(shares[k] * counts[k] for k in range(len(shares)) if k != heavy)
        counts[heavy] = max(1, int(rest / shares[heavy] + 1e-9))
        rate = min(counts[k] / seconds[k] for k in range(len(shares)))
    return counts


#: The GPU fraction the lighter actors take together when they sit beside the slowest stage (below a half).
_BESIDE = 0.45
#: How much slower a light actor runs beside a busy slow actor (they take turns on the device).
_TURNS = 2.0


def _colocated(shares: list[float], seconds: list[float], counts: list[int], gpus: float) -> tuple[list[float], list[int]]:
    """One actor of the slowest (whole-GPU) stage on every GPU and the lighter actors beside them, when that is faster.

    Ray's GPU fractions only decide placement: two actors on one device share its time. The
    lighter actors get fractions adding up to at most ``_BESIDE`` (< 1/2) and the slow stage
    ``1 - _BESIDE`` (> 1/2), so that however Ray places them, no device holds two slow actors
    and every device has room for one: every GPU runs the slow stage and the lighter stages take
    their own seconds from the devices they land on. Their declared fractions are what their
    seconds cost a device; the rate is the GPUs' seconds over every stage's GPU-seconds per item.
    """
    heavy = max(range(len(shares)), key=lambda k: shares[k] * seconds[k])
    devices = int(gpus + 1e-9)
    if abs(shares[heavy] - 1.0) > 1e-9 or devices < 2:
        return shares, counts
    whole = min(n / t for n, t in zip(counts, seconds, strict=True))
    rate = devices / sum(g * t for g, t in zip(shares, seconds, strict=True))
    light = [k for k in range(len(shares)) if k != heavy]
    # A light actor takes turns with the slow actor on its GPU: about half the device while both work, twice its seconds.
    beside = {k: max(1, math.ceil(_TURNS * rate * seconds[k] - 1e-6)) for k in light}
    rate = min([rate, devices / seconds[heavy]] + [beside[k] / seconds[k] for k in light])
    if rate <= whole * 1.02:
        return shares, counts
    each = _floor(_BESIDE / sum(beside.values()))
    new_shares = [_floor(1 - _BESIDE) if k == heavy else each for k in range(len(shares))]
    return new_shares, [devices if k == heavy else beside[k] for k in range(len(shares))]


def check_gpu_memory(steps: list[StepReservation], device_gb: float) -> None:
    """Refuse, before any model loads, actors that Ray may put on one GPU when their declared GPU memory exceeds it.

    Ray places fractional-GPU actors on any device with enough of its fraction left, so every set
    of actors whose fractions add up to at most one GPU may end up together. The worst such set
    (a small knapsack over the actors, at Ray's 1/10000 grain) must fit in ``device_gb``.
    """
    import numpy as np

    actors: list[tuple[str, int, float]] = []  # (stage, weight in grains, GiB)
    whole = round(1 / _GRAIN)
    for s in steps:
        if not s.num_gpus or not s.gpu_memory_gb:
            continue
        if s.num_gpus >= 1 - 1e-9:
            if s.gpu_memory_gb > device_gb * s.num_gpus + 1e-9:
                raise PlanError(
                    f"stage {s.label!r} declares {s.gpu_memory_gb:g} GiB of GPU memory per actor, but its {s.num_gpus:g} GPU(s) "
                    f"have {device_gb * s.num_gpus:g} GiB: give it more num_gpus or lower its gpu_memory_gb"
                )
            continue
        weight = max(1, round(s.num_gpus / _GRAIN))
        high = s.workers[1] if s.pool else whole
        actors += [(s.label, weight, s.gpu_memory_gb)] * min(high or 1, whole // weight)
    if not actors:
        return
    best = np.full(whole + 1, -np.inf)
    best[0] = 0.0
    took = np.zeros((len(actors), whole + 1), dtype=bool)
    for k, (_, weight, gib) in enumerate(actors):
        shifted = np.full(whole + 1, -np.inf)
        shifted[weight:] = best[:-weight] + gib
        took[k] = shifted > best
        best = np.maximum(best, shifted)
    at = int(np.argmax(best))
    if best[at] <= device_gb + 1e-9:
        return
    chosen: list[tuple[str, int, float]] = []
    for k in range(len(actors) - 1, -1, -1):
        if took[k, at]:
            chosen.append(actors[k])
            at -= actors[k][1]
    chosen.reverse()
    names = sorted({c[0] for c in chosen}, key=[c[0] for c in chosen].index)
    parts = [f"{sum(1 for c in chosen if c[0] == n)} x {n!r} ({next(c[2] for c in chosen if c[0] == n):g} GiB at "
             f"{next(c[1] for c in chosen if c[0] == n) * _GRAIN:g} GPU)" for n in names]
    raise PlanError(
        f"stages {', '.join(repr(n) for n in names)} may share one GPU: {' + '.join(parts)} fit its fractions but declare "
        f"{sum(c[2] for c in chosen):g} GiB of GPU memory, and the GPU has {device_gb:g} GiB: give them larger num_gpus "
        f"(fewer per GPU), lower their gpu_memory_gb, or run on larger GPUs"
    )
