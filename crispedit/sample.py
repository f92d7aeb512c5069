"""The sample record: the one contract every stage, the shard writer and the trainer share.

Between stages a sample carries decoded pixels (uint8 arrays), so a pipeline of several
model stages decodes nothing twice; images are encoded exactly once, by the shard writer.
"""

from __future__ import annotations

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
)


@dataclass
class Reject:
    """Why a sample left the build: the stage that refused it and a reason a person can act on."""

    stage: str
    reason: str

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
    edit_objects: list[str] = field(default_factory=list)
    branch: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: Stage-to-stage working data (chosen edit, boxes, prompts). Never written to shards.
    meta: dict[str, Any] = field(default_factory=dict)
    reject: Reject | None = None

    @property
    def alive(self) -> bool:
        return self.reject is None

    def fail(self, stage: str, reason: str) -> None:
        """Mark the sample rejected. The first refusal wins: later stages never see it."""
        if self.reject is None:
            self.reject = Reject(stage=stage, reason=reason)

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


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed for one item and purpose, reproducible from the recipe seed alone."""
    return int(digest(seed, *parts)[:8], 16) & 0x7FFFFFFF


def provenance_json(provenance: dict[str, Any]) -> str:
    """Provenance as canonical JSON (sorted keys) so equal builds give equal bytes."""
    return json.dumps(provenance, sort_keys=True, separators=(",", ":"), default=str)
