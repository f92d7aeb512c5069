"""Pairs made from pairs: the inverse of a pair, and the composite of consecutive turns of a chain.

A derived pair is a child of the row it comes from (``Sample.spawn``: a deterministic id,
the parent's lineage plus a position), so it travels beside it and ``datasets`` sees both.
What the derived row claims is only what it is: its scores are cleared (the filters after the
deriving stage judge it again), its provenance is the item's ``source`` plus a ``derived``
record (the kind, the ids it was made from, which of its images were generated), and its
working data (``meta``) is empty. It is never a turn of a chain, even when made from turns.

Positions: an inverse is child 0 of its pair; the composite of turns i..j is child i (>= 1)
of turn j, so the two never share an id.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crispedit.core.sample import Sample
from crispedit.derived.wording import compound

INVERSE_POSITION = 0
DERIVED_KEY = "derived"


def synthetic_images(pair: Sample) -> tuple[bool, bool]:
    """(the source is generated, the target is generated): from a derived record, else a generated pair's."""
    record = pair.provenance.get(DERIVED_KEY)
    if isinstance(record, dict) and "synthetic_source" in record:
        return bool(record["synthetic_source"]), bool(record["synthetic_target"])
    later_turn = pair.turn is not None and pair.turn > 1  # its source is the turn before's result
    return later_turn or "sdxl_source" in pair.provenance, True  # t2i generators draw the source too


def derived_kind(pair: Sample) -> str | None:
    record = pair.provenance.get(DERIVED_KEY)
    return str(record.get("kind")) if isinstance(record, dict) else None


def _derived(parent: Sample, position: int, record: dict[str, Any], **fields: Any) -> Sample:
    child = parent.spawn(position, **fields)
    child.scores = {}
    child.meta = {}
    child.turn = None
    child.provenance = {**({"source": parent.provenance["source"]} if "source" in parent.provenance else {}), DERIVED_KEY: record}
    return child


def inverse_of(pair: Sample, instruction: str | None, by: str) -> Sample:
    """The pair run backwards: the target becomes the source (a generated image, as flagged), ``instruction`` undoes the edit.

    The inverse of an inverse is the forward pair again: images, captions and both
    instructions swap back, and so do the generated-image flags.
    """
    synthetic_source, synthetic_target = synthetic_images(pair)
    record = {"kind": "inverse", "from": [pair.id], "synthetic_source": synthetic_target, "synthetic_target": synthetic_source,
              "instruction_by": by}
    return _derived(
        pair, INVERSE_POSITION, record,
        source_image=pair.target_image, target_image=pair.source_image,
        source_caption=pair.target_caption, target_caption=pair.source_caption,
        instruction=instruction, inverse_instruction=pair.instruction,
    )


def union_mask(masks: list[np.ndarray | None], level: int = 127) -> np.ndarray | None:
    """Where any mask is above ``level`` (uint8 0/255); None when no mask is given."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    inside = np.zeros(present[0].shape, bool)
    for mask in present:
        if mask.shape != inside.shape:
            raise ValueError(f"masks differ in shape: {mask.shape} vs {inside.shape}")
        inside |= mask > level
    return np.where(inside, 255, 0).astype(np.uint8)


def composite_of(turns: list[Sample], instruction: str | None, by: str) -> Sample:
    """Turns i..j of one chain (consecutive, in order) as one pair: turn i's source, turn j's target.

    The mask is the union of the turns' masks (none when no turn has one); the inverse
    instruction joins the turns' inverses backwards when every turn has one.
    """
    first, last = turns[0], turns[-1]
    if first.turn is None or any(t.turn != first.turn + n for n, t in enumerate(turns)):
        raise ValueError("a composite is made of consecutive turns of one chain")
    synthetic_source, _ = synthetic_images(first)
    inverses = [t.inverse_instruction for t in reversed(turns)]
    objects: list[str] = []
    for t in turns:
        objects += [o for o in t.edit_objects if o not in objects]
    tasks = {t.task for t in turns}
    record = {"kind": "compose", "from": [t.id for t in turns], "turns": [first.turn, last.turn],
              "synthetic_source": synthetic_source, "synthetic_target": True, "instruction_by": by}
    return _derived(
        last, int(first.turn), record,
        source_image=first.source_image, target_image=last.target_image,
        mask=union_mask([t.mask for t in turns]),
        source_caption=first.source_caption, target_caption=last.target_caption,
        instruction=instruction,
        inverse_instruction=compound([i for i in inverses if i]) if all(inverses) else None,
        edit_objects=objects, task=tasks.pop() if len(tasks) == 1 else "composite",
    )
