"""The sample record: the one contract every stage, the shard writer and the trainer share.

Between stages a sample carries decoded pixels (uint8 arrays), so a pipeline of several
model stages decodes nothing twice; images are encoded exactly once, by the shard writer.

Identity: a source item's sample has ``id = H(fingerprint, index)``. A stage may replace a
sample by children (one video gives several pairs, one prompt N candidates); a child's id
is ``H(parent id, position)`` and its ``lineage`` is the parent's plus its position, so ids
stay deterministic and ``(index, lineage)`` orders every row of a shard the same way on
every runner. A stage may also return a sample followed by children derived from it (an
inverse or composed pair beside the pair it came from). Random choices use
:meth:`Sample.seed`, which derives from the id.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Columns of a data shard, in order, before the per-metric score columns.
IMAGE_COLUMNS = ("source_image", "target_image", "mask")
TEXT_COLUMNS = (
    "instruction",
    "inverse_instruction",
    "task",
    "source_caption",
    "target_caption",
    "instruction_original",
    "instruction_short",
    "instruction_translations",
    "source_license",
)


@dataclass
class Reject:
    """Why a sample left the build: the stage that refused it and a reason a person can act on.

    ``filtered`` marks a reject made by a filter's decision: such a sample still has its
    images, so later filters keep scoring it and ``refilter`` can bring it back.
    """

    stage: str
    reason: str
    filtered: bool = False

    @property
    def category(self) -> str:
        """The part of the reason before the first colon: what stats count drops by."""
        return self.reason.split(":")[0]


@dataclass
class Sample:
    """One (source, instruction, target) pair on its way through the stages."""

    id: str
    index: int
    source_ref: str
    source_image: np.ndarray | None = None  # HxWx3 uint8, RGB
    target_image: np.ndarray | None = None  # HxWx3 uint8, RGB
    mask: np.ndarray | None = None  # HxW uint8, 255 = edit
    instruction: str | None = None
    inverse_instruction: str | None = None
    task: str | None = None
    source_caption: str | None = None
    target_caption: str | None = None
    #: What ``instruction`` said before a stage rewrote it (``recaption``), kept beside the new text.
    instruction_original: str | None = None
    #: The same edit in a few words (at most 12), where a stage wrote one.
    instruction_short: str | None = None
    #: JSON ``{"zh": {"long": ..., "short": ...}}``: the instruction in other languages, where a stage wrote them.
    instruction_translations: str | None = None
    #: The source image's licence, where the source declares one (``unknown`` for a row it gives none).
    source_license: str | None = None
    edit_objects: list[str] = field(default_factory=list)
    branch: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: Stage-to-stage working data (chosen edit, boxes, prompts). Never written to shards.
    meta: dict[str, Any] = field(default_factory=dict)
    reject: Reject | None = None
    parent_id: str | None = None
    #: Positions of this sample among its ancestors' children: () for a source item.
    lineage: tuple[int, ...] = ()
    #: Its place in a multi-turn chain (1 = the first edit of the original image); None outside chains.
    turn: int | None = None
    #: (stage, seconds charged, counted as an input) for every stage that handled it alive.
    #: The shard's stats are computed from these, on whichever worker writes it.
    trace: list[tuple[str, float, bool]] = field(default_factory=list)
    #: Counters per stage (LLM requests, tokens, cost...), summed into the build summary.
    usage: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.reject is None

    def fail(self, stage: str, reason: str, *, filtered: bool = False) -> None:
        """Mark the sample rejected. The first refusal wins."""
        if self.reject is None:
            self.reject = Reject(stage=stage, reason=reason, filtered=filtered)

    def seed(self, purpose: str) -> int:
        """A 31-bit seed for one purpose (``"noise"``, ``"few-shot"``...), derived from the id."""
        return int(digest(self.id, purpose)[:8], 16) & 0x7FFFFFFF

    def spawn(self, position: int, **fields: Any) -> Sample:
        """A child: its id derives from this sample's id and ``position``; fields are copied, then updated.

        Positions must be distinct among the children of one parent (they order the rows).
        """
        child = self.clone()
        child.id = child_id(self.id, position)
        child.parent_id = self.id
        child.lineage = (*self.lineage, position)
        child.trace = []
        child.usage = {}
        for name, value in fields.items():
            if not hasattr(child, name):
                raise AttributeError(f"a sample has no field {name!r}")
            setattr(child, name, value)
        return child

    def clone(self) -> Sample:
        """A copy whose containers are its own (arrays are shared: stages replace them, never write into them)."""
        twin = copy.copy(self)
        twin.edit_objects = list(self.edit_objects)
        twin.scores = dict(self.scores)
        twin.provenance = copy.deepcopy(self.provenance)
        twin.meta = dict(self.meta)
        twin.trace = list(self.trace)
        twin.usage = {k: dict(v) for k, v in self.usage.items()}
        return twin

    def add_usage(self, stage: str, **counters: float) -> None:
        """Add counters (requests, tokens_in, cost_usd...) charged to ``stage`` by this sample."""
        slot = self.usage.setdefault(stage, {})
        for key, value in counters.items():
            if value:
                slot[key] = slot.get(key, 0) + value

    @property
    def order_key(self) -> str:
        """Sorts rows of a shard by item, then by child position, whatever the runner."""
        return f"{self.index:012d}" + "".join(f".{p:06d}" for p in self.lineage)

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the pair, from whichever image exists."""
        image = self.source_image if self.source_image is not None else self.target_image
        if image is None:
            return None
        return int(image.shape[1]), int(image.shape[0])


def digest(*parts: object) -> str:
    """A stable hex digest of the parts' text, the root of every id and seed."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def sample_id(fingerprint: str, index: int) -> str:
    """Deterministic id: the same recipe gives the same ids, whichever machine builds it."""
    return digest(fingerprint, index)[:24]


def child_id(parent_id: str, position: int) -> str:
    """The id of a parent's child at ``position``: deterministic, and distinct from any item id."""
    return digest("child", parent_id, position)[:24]


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed for one item and purpose, reproducible from the recipe seed alone."""
    return int(digest(seed, *parts)[:8], 16) & 0x7FFFFFFF


def provenance_json(provenance: dict[str, Any]) -> str:
    """Provenance as canonical JSON (sorted keys) so equal builds give equal bytes."""
    return json.dumps(provenance, sort_keys=True, separators=(",", ":"), default=str)
