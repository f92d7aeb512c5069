"""What a stage is, how stages are registered by kind, and how one bad sample is isolated.

A stage is a class with ``setup()`` (load models once per worker) and
``__call__(batch) -> batch``. For each input sample, in order, a stage returns the sample
itself (maybe rejected with a reason) or one or more children (``sample.spawn(k)``). The
same class runs in-process and inside a Ray actor or task; the engine decides where from
what the class declares here (resources, batch size, inputs and outputs).

Three kinds of failure, kept apart on purpose:

* the sample's fault (a corrupt file, an answer that is not JSON): a reject with a reason;
* not the sample's fault (a server down, out of memory): :class:`TransientError`. The
  shard is left uncommitted and a rerun builds it;
* the stage's fault (a bug raised on most samples): the breaker raises :class:`StageBroken`
  and the build stops instead of committing a shard full of rejects.
"""

from __future__ import annotations

import logging
import time
import traceback
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from crispedit.core.sample import Sample

log = logging.getLogger("crispedit")


class StageParams(BaseModel):
    """Parameters of one stage, as written in the recipe. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class BuildContext:
    """What every stage may know about the build it runs in."""

    recipe_name: str
    fingerprint: str
    seed: int
    tiny: bool = False
    recipe_dir: Path = Path(".")
    cache_dir: Path = Path(".crispedit-cache")


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; the recipe's ``execution.stages.NAME`` overrides it."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float | None = None


class TransientError(RuntimeError):
    """Not the sample's fault: a server unreachable after retries, out of memory.

    Raised by a stage, it leaves the sample's shard uncommitted, so a rerun builds it;
    it never becomes a committed reject.
    """


class StageBroken(RuntimeError):
    """The breaker tripped: one stage failed most samples with the same exception type.

    That is a bug or a broken setup, not bad samples; the build stops and keeps the traceback.
    """

    def __init__(self, stage: str, message: str, trace: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.trace = trace


class Stage(ABC):
    """One step of a build.

    Subclasses set ``kind`` (the recipe's ``kind:``), ``Params`` (their pydantic schema, every
    field described), and what they need: ``uses_models = True`` runs them in a Ray actor
    pool where ``setup()`` runs once per actor; ``resources`` (GPUs, CPUs, memory) and
    ``default_batch_size`` place them; ``requires``/``provides`` name the sample fields and
    working data (``meta.KEY``) they read and write, checked by ``crispedit validate``.
    """

    kind: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    uses_models: ClassVar[bool] = False
    resources: ClassVar[Resources] = Resources()
    default_batch_size: ClassVar[int] = 16
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    #: Batches never split the children of one source item (selection needs them together).
    whole_families: ClassVar[bool] = False

    def __init__(self, params: StageParams, context: BuildContext, name: str | None = None) -> None:
        self.params = params
        self.context = context
        self.name = name or self.kind

    def setup(self) -> None:
        """Load models and other per-worker state. Called once before the first batch."""

    @abstractmethod
    def __call__(self, batch: list[Sample]) -> list[Sample]:
        """Return, for each input in order, the sample itself (maybe failed) or its children."""

    def accepts(self, sample: Sample) -> bool:
        """Which samples the stage is given: live ones (filters also score filtered rejects)."""
        return sample.alive

    @property
    def in_actor_pool(self) -> bool:
        """Run in a Ray actor pool (``setup()`` once per actor)? Override when it depends on params,
        e.g. an instruct stage needs a client only for its LLM backend."""
        return self.uses_models

    def inputs(self) -> set[str]:
        """Fields and ``meta.KEY``s this stage reads (may depend on params)."""
        return set(self.requires)

    def outputs(self) -> set[str]:
        """Fields and ``meta.KEY``s this stage writes (may depend on params)."""
        return set(self.provides)

    def score_columns(self) -> list[str]:
        """Names of the score columns this stage fills (each becomes a float column)."""
        return []

    def model_ids(self) -> dict[str, str]:
        """Model ids and revisions this stage uses, for provenance."""
        return {}


class FilterStage(Stage):
    """A filter: ``score`` a batch, then ``decide`` per sample from its scores alone.

    The base owns the loop. Every sample that reaches the filter is scored, including
    samples an earlier filter rejected, so every score is kept on rejects too; only live
    samples are decided on. ``decide`` needs no model, which is what lets ``refilter``
    re-apply other thresholds to a finished build without regenerating anything.
    """

    columns: ClassVar[tuple[str, ...]] = ()
    default_batch_size: ClassVar[int] = 64
    requires: ClassVar[tuple[str, ...]] = ("source_image", "target_image")

    @abstractmethod
    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        """One dict of scores per sample, in order (None where a score does not apply)."""

    @abstractmethod
    def decide(self, scores: dict[str, float | None]) -> str | None:
        """A reject reason (``"category: detail"``) or None to keep the sample."""

    def accepts(self, sample: Sample) -> bool:
        """Live samples, and filter rejects that still carry what this filter reads (a reject made
        before the generator ran has no target to score)."""
        if sample.alive:
            return True
        if sample.reject is None or not sample.reject.filtered:
            return False
        fields = [f for f in self.inputs() if not f.startswith(("meta.", "score."))]
        return all(getattr(sample, f, None) is not None for f in fields)

    def thresholds(self) -> dict[str, tuple[float | None, float | None]]:
        """(min, max) kept per score column, for the preview, the dataset card and histograms."""
        return {}

    def annotate(self, reason: str, provenance: dict[str, Any]) -> str:
        """The reason ``decide`` gave, completed from what ``score`` recorded in provenance (the
        matched duplicate, the benchmark item); ``refilter`` calls it too, with no model loaded."""
        return reason

    def score_columns(self) -> list[str]:
        return list(self.columns)

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample, scores in zip(batch, self.score(batch), strict=True):
            sample.scores.update(scores)
            if sample.alive:
                reason = self.decide(scores)
                if reason is not None:
                    sample.fail(self.name, self.annotate(reason, sample.provenance), filtered=True)
        return batch


S = TypeVar("S", bound=type[Stage])
STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: S) -> S:
    """Class decorator: make a stage available to recipes under its ``kind``."""
    if cls.kind in STAGES and STAGES[cls.kind] is not cls:
        raise ValueError(f"stage kind {cls.kind!r} registered twice")
    STAGES[cls.kind] = cls
    return cls


# --- statistics, computed from the samples themselves ----------------------------------


@dataclass
class StageStats:
    """Counts and time for one stage over some samples; summed over shards for the summary."""

    seen: int = 0
    passed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    usage: Counter[str] = field(default_factory=Counter)

    def add(self, other: StageStats) -> None:
        self.seen += other.seen
        self.passed += other.passed
        self.rejected.update(other.rejected)
        self.seconds += other.seconds
        self.usage.update(other.usage)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seen": self.seen,
            "passed": self.passed,
            "rejected": dict(sorted(self.rejected.items())),
            "seconds": round(self.seconds, 4),
        }
        if self.usage:
            out["usage"] = {k: round(v, 6) for k, v in sorted(self.usage.items())}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageStats:
        return cls(
            seen=int(data["seen"]),
            passed=int(data["passed"]),
            rejected=Counter(data.get("rejected", {})),
            seconds=float(data.get("seconds", 0.0)),
            usage=Counter(data.get("usage", {})),
        )


def stage_stats(samples: list[Sample]) -> dict[str, StageStats]:
    """Per-stage stats of a shard from its final samples' traces, in pipeline order.

    ``seen`` counts inputs, ``passed`` the outputs that left the stage alive (children
    included), ``rejected`` the outputs the stage refused, by reason category.
    """
    stats: dict[str, StageStats] = {}
    for sample in samples:
        for stage, seconds, is_input in sample.trace:
            entry = stats.setdefault(stage, StageStats())
            entry.seconds += seconds
            entry.seen += int(is_input)
            refused_here = sample.reject is not None and sample.reject.stage == stage
            if refused_here:
                entry.rejected[sample.reject.category] += 1  # type: ignore[union-attr]
            else:
                entry.passed += 1
        for stage, counters in sample.usage.items():
            stats.setdefault(stage, StageStats()).usage.update(counters)
    return stats


# --- running a stage over samples ------------------------------------------------------


@dataclass(frozen=True)
class Breaker:
    """When failures of one exception type mean a broken stage rather than bad samples."""

    min_failures: int = 3
    fraction: float = 0.5

    def tripped(self, failures: int, seen: int) -> bool:
        return seen >= 2 and failures >= min(self.min_failures, seen) and failures >= self.fraction * seen


def describe_error(error: BaseException) -> str:
    """One line a user can act on, with the exception type (message cut to a sane length)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _is_out_of_memory(error: BaseException) -> bool:
    """CUDA or host OOM: the machine's fault, not the sample's."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def apply_stage(
    stage: Stage | Callable[[list[Sample]], list[Sample]],
    name: str,
    samples: list[Sample],
    batch_size: int,
    breaker: Breaker = Breaker(),
) -> list[Sample]:
    """Run ``stage`` over the samples it accepts, in batches; return the new list of samples.

    Samples the stage does not accept pass through in place. If a batch raises, its
    samples are retried one by one (from untouched copies), and only a sample that fails
    alone becomes a reject. Each output is charged its share of the batch's seconds.
    """
    accepts = stage.accepts if isinstance(stage, Stage) else (lambda s: s.alive)
    whole = isinstance(stage, Stage) and stage.whole_families
    chosen = [i for i, s in enumerate(samples) if accepts(s)]
    results: dict[int, list[Sample]] = {}
    failures: Counter[str] = Counter()
    first_trace: dict[str, str] = {}
    for chunk in _chunks(chosen, samples, max(1, batch_size), whole):
        batch = [samples[i] for i in chunk]
        start = time.perf_counter()
        try:
            outputs = _checked_call(stage, name, batch)
        except TransientError:
            raise
        except Exception as error:
            if _is_out_of_memory(error):
                raise TransientError(f"out of memory in stage {name!r}: {describe_error(error)}") from error
            if len(batch) > 1:
                log.warning("stage %s: a batch of %d failed (%s); retrying its samples one by one", name, len(batch), describe_error(error))
            outputs = []
            for sample in batch:
                try:
                    outputs.append(_checked_call(stage, name, [sample])[0])
                except TransientError:
                    raise
                except Exception as single:
                    if _is_out_of_memory(single):
                        raise TransientError(f"out of memory in stage {name!r}: {describe_error(single)}") from single
                    kind = type(single).__name__
                    failures[kind] += 1
                    first_trace.setdefault(kind, "".join(traceback.format_exception(single, chain=False)))
                    refused = sample.clone()
                    refused.fail(name, describe_error(single))
                    outputs.append([refused])
        share = (time.perf_counter() - start) / max(1, sum(len(o) for o in outputs))
        for i, original, produced in zip(chunk, batch, outputs, strict=True):
            results[i] = _account(name, original, produced, share)
    if failures:
        kind, count = failures.most_common(1)[0]
        if breaker.tripped(count, len(chosen)):
            raise StageBroken(
                name,
                f"stage {name!r} raised {kind} on {count} of {len(chosen)} samples: a bug or a broken setup, not bad samples",
                first_trace[kind],
            )
    out: list[Sample] = []
    for i, sample in enumerate(samples):
        out.extend(results.get(i, [sample]))
    return out


def _chunks(chosen: list[int], samples: list[Sample], size: int, whole: bool) -> Iterator[list[int]]:
    """Batches of ``size`` samples; with ``whole``, never split the samples of one source item."""
    chunk: list[int] = []
    for position, i in enumerate(chosen):
        chunk.append(i)
        if len(chunk) >= size:
            following = chosen[position + 1] if position + 1 < len(chosen) else None
            if not whole or following is None or samples[following].index != samples[i].index:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _account(name: str, original: Sample, produced: list[Sample], share: float) -> list[Sample]:
    """Charge the stage to its outputs: the parent's history and counters go to its first output."""
    was_alive = original.alive
    for k, sample in enumerate(produced):
        if sample is not original and sample.parent_id == original.id:  # a child
            if k == 0:
                sample.trace = list(original.trace)
                merged = {s: dict(c) for s, c in original.usage.items()}
                for s, c in sample.usage.items():
                    for key, value in c.items():
                        merged.setdefault(s, {})[key] = merged.get(s, {}).get(key, 0) + value
                sample.usage = merged
        if was_alive:
            sample.trace.append((name, share, k == 0))
    return produced


def _checked_call(stage: Callable[[list[Sample]], list[Sample]], name: str, batch: list[Sample]) -> list[list[Sample]]:
    """Call the stage on copies and group its outputs by input: itself, or its children in order.

    Copies keep a failed batch from leaving half-made changes on the samples retried alone.
    """
    copies = [s.clone() for s in batch]
    out = stage(copies)
    grouped: list[list[Sample]] = []
    position = 0
    for original in batch:
        group: list[Sample] = []
        while position < len(out) and (out[position].id == original.id or out[position].parent_id == original.id):
            group.append(out[position])
            position += 1
        if not group:
            raise RuntimeError(f"stage {name!r} returned nothing for sample {original.id}; reject it with a reason instead")
        if len(group) > 1 and any(s.id == original.id for s in group):
            raise RuntimeError(f"stage {name!r} returned sample {original.id} together with its children")
        ids = [s.id for s in group]
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"stage {name!r} returned two children with the same id (reuse of a position)")
        grouped.append(group)
    if position != len(out):
        raise RuntimeError(f"stage {name!r} must return its input samples (or their children) in order")
    return grouped
