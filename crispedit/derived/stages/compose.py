"""The ``compose`` stage: consecutive turns of a chain as one pair, A->B and B->C giving A->C (NHR-Edit).

It reads the turns a ``multi_turn`` stage made (rows with ``turn`` set, children of one chain).
After turn j it returns turn j, then the composite of turns i..j for every span asked for
(``spans: from_start``: i = 1, the original image to each later turn; ``all``: every i < j),
as child i of turn j. A composite's source is turn i's source, its target turn j's result,
its mask the union of the turns' masks, its instruction the steps as one ("A, then b") or
an LLM's single instruction; its scores are empty, so the filters after it judge it again.
Only live turns compose: a chain broken at turn 3 composes up to turn 2.
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar, Literal

from pydantic import Field

from crispedit.core.sample import Sample
from crispedit.core.stage import Resources, Stage, register_stage
from crispedit.derived.pairs import composite_of
from crispedit.derived.stages.words import Ask, WordsParams, WordsStage
from crispedit.derived.wording import CompoundAnswer, compound, compound_messages


class ComposeParams(WordsParams):
    spans: Literal["from_start", "all"] = Field(
        "from_start", description="which runs of turns compose: from the original image to each later turn, or every run of 2+ turns",
    )
    max_turns: int = Field(8, ge=2, description="longest run of turns composed into one pair")


@register_stage
class ComposeStage(WordsStage, Stage[ComposeParams]):
    """Runs of consecutive chain turns as single pairs, with a compound instruction."""

    kind = "compose"
    resources = Resources(num_cpus=1)
    default_batch_size = 64
    whole_families = True  # the turns of one chain are one item's children: never split them
    cites: ClassVar[tuple[str, ...]] = ("NHR-Edit (Kuprashevich et al. 2025): composed edits as extra pairs",)

    def inputs(self) -> set[str]:
        return {"source_image", "target_image", "instruction"}

    def _starts(self, turn: int) -> list[int]:
        if turn < 2:
            return []
        low = max(1, turn - self.params.max_turns + 1)  # the first turn a run ending at `turn` may start from
        if self.params.spans == "from_start":
            return [1] if low == 1 else []
        return list(range(low, turn))

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        chains: dict[str, dict[int, Sample]] = defaultdict(dict)
        for s in batch:
            if s.turn is not None and s.parent_id is not None:
                chains[s.parent_id][s.turn] = s
        out: list[Sample] = []
        asks: list[Ask] = []
        for s in batch:
            out.append(s)
            if s.turn is None or s.parent_id is None:
                continue
            chain = chains[s.parent_id]
            for start in self._starts(s.turn):
                run = [chain.get(t) for t in range(start, s.turn + 1)]
                if any(t is None for t in run):
                    continue  # a turn of the run is missing (rejected before this stage)
                turns = [t for t in run if t is not None]
                steps = [t.instruction for t in turns]
                if self.live:
                    child = composite_of(turns, None, self.writer())
                    asks.append(Ask(child, compound_messages([x or "" for x in steps]), CompoundAnswer, "compose-llm"))
                elif all(steps):
                    self.warn_offline("compound instructions join the turns' instructions")  # says so under --tiny only
                    child = composite_of(turns, compound([x for x in steps if x]), "template")
                else:
                    child = composite_of(turns, None, "none")
                    child.fail(self.name, "no instruction: a turn of the run has none")
                out.append(child)
        for a, answer in zip(asks, self.ask(asks), strict=True):
            if answer is not None:
                a.row.instruction = answer.instruction
        return out
