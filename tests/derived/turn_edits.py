"""A test plugin: the edit each turn of a chain makes, chosen by the turn number (a recipe's ``plugins:`` imports it).

``turn_edit`` plays the instruct stage's part for the real ``classical`` generator, with the
choice fixed instead of drawn: ``edits[k - 1]`` at turn k, its parameters given.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from crispedit.classical.edits import EDITS
from crispedit.core.sample import Sample
from crispedit.core.stage import Stage, StageParams, register_stage


class TurnEditParams(StageParams):
    edits: list[dict[str, Any]] = Field(description="per turn: {name: a classical edit, params: its parameters}")


@register_stage
class TurnEdit(Stage[TurnEditParams]):
    kind = "turn_edit"

    def outputs(self) -> set[str]:
        return {"instruction", "meta.edit"}

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            chosen = self.params.edits[(sample.turn or 1) - 1]
            edit = EDITS[chosen["name"]]
            sample.meta["edit"] = {"name": edit.name, "params": chosen.get("params", {})}
            sample.instruction = edit.phrasings(chosen.get("params", {}))[0]
            sample.inverse_instruction = edit.inverse(chosen.get("params", {}))
        return batch
