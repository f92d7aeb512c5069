"""Benchmark-only stage kinds, registered through a recipe's ``plugins: [benchmarks.stages]``."""

from __future__ import annotations

from crispedit.classical.copy import CopyStage
from crispedit.core.stage import register_stage


@register_stage
class CopyInActorStage(CopyStage):
    """The copy generator run the way a model stage runs: in an actor pool, so every sample
    crosses two Ray step boundaries (the transport a real GPU stage pays for)."""

    kind = "copy_actor"
    in_actor_pool = True
