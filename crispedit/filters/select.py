"""The ``select`` stage: best-of-N. Keep the top k children of each parent by a named score.

Generators make N candidates per item with distinct seeds (children of the item); a
filter scores them; ``select`` keeps the best k of each family and rejects the rest with
their rank, so every candidate's scores stay in the rejects and a user can see what lost.
"""

from __future__ import annotations

from collections import defaultdict

from pydantic import Field

from crispedit.core.sample import Sample
from crispedit.core.stage import Stage, StageParams, register_stage


class SelectParams(StageParams):
    score: str = Field(description="the score column to rank the candidates of one parent by")
    keep: int = Field(1, ge=1, description="how many candidates of each parent to keep")
    higher_is_better: bool = Field(True, description="rank by descending score (False: ascending)")


def rank_families(samples: list[Sample], score: str, higher_is_better: bool = True) -> dict[str, list[Sample]]:
    """Siblings grouped by parent, best first; a missing score ranks last; ties keep child order."""
    families: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        families[sample.parent_id or sample.id].append(sample)

    def key(s: Sample) -> tuple[int, float]:
        value = s.scores.get(score)
        if value is None:
            return (1, 0.0)
        return (0, -value if higher_is_better else value)

    return {parent: sorted(members, key=key) for parent, members in families.items()}


@register_stage
class SelectStage(Stage[SelectParams]):
    kind = "select"
    default_batch_size = 256
    whole_families = True

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        p = self.params
        for members in rank_families(batch, p.score, p.higher_is_better).values():
            for rank, sample in enumerate(members, start=1):
                value = sample.scores.get(p.score)
                if value is None:
                    sample.fail(self.name, f"not selected: no {p.score} score", filtered=True)
                elif rank > p.keep:
                    sample.fail(self.name, f"not selected: rank {rank} of {len(members)} by {p.score} ({value:.4f})", filtered=True)
                else:
                    sample.provenance["select"] = {"rank": rank, "of": len(members), "by": p.score}
        return batch
