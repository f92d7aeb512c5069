"""What a stage is, and how stages are registered by kind.

A stage is a class with ``setup()`` (load models once per worker) and
``__call__(batch) -> batch``. For each input sample, in order, a stage returns the sample
itself (maybe rejected with a reason), one or more children (``sample.spawn(k)``), or the
sample followed by children derived from it (an inverse pair beside its forward pair). The
same class runs in-process and inside a Ray actor or task; the engine decides where from
what the class declares here (resources, batch size, inputs and outputs).

A failure is a reject with a reason, a transient error or a broken stage (crispedit.core.failures).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, get_args

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
    #: GPU memory one worker holds (its models and activations), in GiB: checked against the device when actors share it.
    gpu_memory_gb: float | None = None


P = TypeVar("P", bound=StageParams)

#: Declarations of the first contract, each said another way now (a plugin using one gets this error).
RETIRED = {
    "uses_models": "set in_actor_pool = True",
    "requires": "define inputs()",
    "provides": "define outputs()",
    "columns": "define score_columns()",
}


def params_of(cls: type) -> type[StageParams] | None:
    """The ``StageParams`` class a stage or source class is parametrised with (``Stage[XParams]``), if any."""
    for base in getattr(cls, "__orig_bases__", ()):
        for arg in get_args(base):
            if isinstance(arg, type) and issubclass(arg, StageParams):
                return arg
    return None


def declare(cls: type, retired: dict[str, str]) -> None:
    """What a stage or source subclass declares: ``Params`` from its type parameter, no retired name."""
    declared = params_of(cls)
    if declared is not None:
        cls.Params = declared  # type: ignore[attr-defined]
    found = sorted(set(vars(cls)) & set(retired))
    if found:
        raise TypeError(f"{cls.__name__}: {', '.join(found)} no longer exist; " + "; ".join(f"{name}: {retired[name]}" for name in found))


class Stage(ABC, Generic[P]):
    """One step of a build.

    A stage says each thing one way:

    * ``class MyStage(Stage[MyParams])``: its parameters, a pydantic model with every field
      described (``self.params`` is a ``MyParams``; ``MyStage.Params`` is set from it for the recipe);
    * ``kind``: the recipe's ``kind:``; ``cites``: the published methods it implements;
    * ``in_actor_pool = True``: it runs in a Ray actor pool, where the engine calls ``setup()``
      once per actor (a property when it depends on params); ``resources`` (GPUs, CPUs,
      memory) and ``default_batch_size`` place it;
    * ``inputs()`` / ``outputs()``: the sample fields and working data (``meta.KEY``) it reads
      and writes, checked by ``crispedit validate``; ``score_columns()``: the score columns it fills.

    The engine calls ``setup()`` once per worker before the first batch; a stage never calls it itself.
    """

    kind: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    params: P
    in_actor_pool: bool = False
    resources: ClassVar[Resources] = Resources()
    default_batch_size: ClassVar[int] = 16
    #: Batches never split the children of one source item (selection needs them together).
    whole_families: ClassVar[bool] = False
    #: Published methods the stage implements, for the dataset card ("InstructPix2Pix (Brooks et al. 2023): ...").
    cites: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declare(cls, RETIRED)

    def __init__(self, params: P, context: BuildContext, name: str | None = None) -> None:
        self.params = params
        self.context = context
        self.name = name or self.kind

    def setup(self) -> None:
        """Load models and other per-worker state. Called once before the first batch."""

    @abstractmethod
    def __call__(self, batch: list[Sample]) -> list[Sample]:
        """Return, for each input in order, the sample itself (maybe failed), its children, or itself then its children."""

    def accepts(self, sample: Sample) -> bool:
        """Which samples the stage is given: live ones (filters also score filtered rejects)."""
        return sample.alive

    def inputs(self) -> set[str]:
        """Fields and ``meta.KEY``s this stage reads (may depend on params)."""
        return set()

    def outputs(self) -> set[str]:
        """Fields and ``meta.KEY``s this stage writes (may depend on params)."""
        return set()

    def score_columns(self) -> list[str]:
        """Names of the score columns this stage fills (each becomes a float column)."""
        return []

    def model_ids(self) -> dict[str, str]:
        """Model ids and revisions this stage uses, for provenance."""
        return {}

    def model_files(self) -> dict[str, Any]:
        """The models this stage loads, by the same keys as ``model_ids``, with the files their loaders read
        (``crispedit.models.hub.ModelFiles``; core imports nothing above it): what ``crispedit models`` lists
        and downloads, and what the build checks the resolved commit of."""
        return {}


class FilterStage(Stage[P]):
    """A filter: ``score`` a batch, then ``decide`` per sample from its scores alone.

    The base owns the loop. Every sample that reaches the filter is scored, including
    samples an earlier filter rejected, so every score is kept on rejects too; only live
    samples are decided on. ``decide`` needs no model, which is what lets ``refilter``
    re-apply other thresholds to a finished build without regenerating anything.
    """

    default_batch_size: ClassVar[int] = 64

    def inputs(self) -> set[str]:
        return {"source_image", "target_image"}

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

    def not_applicable(self, stored: set[str]) -> str | None:
        """Why this filter's rule does not apply to a pair that holds only the image fields ``stored``
        (``source_image``, ``target_image``, ``mask``), or None when it applies.

        Such a pair passes the filter without its scores: ``refilter`` counts it under this reason
        and does not demand the filter's score columns of a build in which no pair it decides
        again is one the rule applies to (UltraEdit's mask rule, ``mask_filter`` with
        ``unmasked: keep``, on a global edit that has no mask)."""
        return None

    def annotate(self, reason: str, provenance: dict[str, Any]) -> str:
        """The reason ``decide`` gave, completed from what ``score`` recorded in provenance (the
        matched duplicate, the benchmark item); ``refilter`` calls it too, with no model loaded."""
        return reason

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
    return add_kind(STAGES, "stage", cls)


def add_kind(registry: dict[str, Any], what: str, cls: Any) -> Any:
    """Put ``cls`` in ``registry`` under its ``kind``; another class under the same kind is an error."""
    if cls.kind in registry and registry[cls.kind] is not cls:
        raise ValueError(f"{what} kind {cls.kind!r} registered twice")
    registry[cls.kind] = cls
    return cls


