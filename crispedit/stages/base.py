"""What a stage is, how stages are registered by kind, and how one bad sample is isolated.

A stage is a class with ``setup()`` (load models once per worker) and
``__call__(batch) -> batch``. The same class runs in-process and inside a Ray actor or
task; the engine decides where from the class attributes declared here.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from crispedit.sample import Sample


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


class Stage(ABC):
    """One step of a build.

    Subclasses set ``kind`` (the recipe's ``kind:``), ``Params`` (their pydantic schema) and,
    when they hold models, ``uses_models = True`` so Ray runs them in an actor pool where
    ``setup()`` runs once per actor instead of once per batch.
    """

    kind: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    uses_models: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 16

    def __init__(self, params: StageParams, context: BuildContext, name: str | None = None) -> None:
        self.params = params
        self.context = context
        self.name = name or self.kind

    def setup(self) -> None:
        """Load models and other per-worker state. Called once before the first batch."""

    @abstractmethod
    def __call__(self, batch: list[Sample]) -> list[Sample]:
        """Process live samples. Mark failures with ``sample.fail``; never drop a sample."""

    def score_columns(self) -> list[str]:
        """Names of the score columns this stage fills (each becomes a float column)."""
        return []

    def model_ids(self) -> dict[str, str]:
        """Model ids and revisions this stage uses, for provenance."""
        return {}


S = TypeVar("S", bound=type[Stage])
STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: S) -> S:
    """Class decorator: make a stage available to recipes under its ``kind``."""
    if cls.kind in STAGES and STAGES[cls.kind] is not cls:
        raise ValueError(f"stage kind {cls.kind!r} registered twice")
    STAGES[cls.kind] = cls
    return cls


@dataclass
class StageStats:
    """Counts and time for one stage over some samples; summed over shards for the summary."""

    seen: int = 0
    passed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, other: StageStats) -> None:
        self.seen += other.seen
        self.passed += other.passed
        self.rejected.update(other.rejected)
        self.seconds += other.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "passed": self.passed,
            "rejected": dict(sorted(self.rejected.items())),
            "seconds": round(self.seconds, 4),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageStats:
        return cls(
            seen=int(data["seen"]),
            passed=int(data["passed"]),
            rejected=Counter(data.get("rejected", {})),
            seconds=float(data.get("seconds", 0.0)),
        )


def describe_error(error: BaseException) -> str:
    """One line a user can act on, with the exception type (message cut to a sane length)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def apply_stage(
    stage: Callable[[list[Sample]], list[Sample]],
    name: str,
    samples: list[Sample],
    batch_size: int,
) -> StageStats:
    """Run ``stage`` over the live samples in batches, in place, and count what happened.

    If a batch raises, each of its samples is retried alone so that only the sample that
    fails becomes a reject (with the exception as its reason); the others go on.
    """
    stats = StageStats()
    live = [s for s in samples if s.alive]
    stats.seen = len(live)
    start = time.perf_counter()
    for lo in range(0, len(live), max(1, batch_size)):
        chunk = live[lo : lo + batch_size]
        try:
            _checked_call(stage, name, chunk)
        except Exception:
            for sample in chunk:
                if not sample.alive:
                    continue
                try:
                    _checked_call(stage, name, [sample])
                except Exception as error:  # one bad sample: a reject with a reason
                    sample.fail(name, describe_error(error))
    stats.seconds = time.perf_counter() - start
    for sample in live:
        if sample.alive:
            stats.passed += 1
        elif sample.reject is not None and sample.reject.stage == name:
            stats.rejected[sample.reject.category] += 1
    return stats


def _checked_call(stage: Callable[[list[Sample]], list[Sample]], name: str, chunk: list[Sample]) -> None:
    """Call the stage and enforce the contract that no sample disappears or changes identity."""
    out = stage(chunk)
    if [s.id for s in out] != [s.id for s in chunk]:
        raise RuntimeError(f"stage {name!r} must return its input samples in order, one for one")
    for original, returned in zip(chunk, out):
        if returned is not original:
            original.__dict__.update(returned.__dict__)
