"""The stage contract under its old import path, for ``plugins:`` modules written against it.

It re-exports ``crispedit.core`` and imports no stage kind: the built-in kinds are listed
in ``crispedit.recipe.catalog``. New code imports ``crispedit.core.stage`` and
``crispedit.core.source`` directly.
"""

from crispedit.core.failures import StageBroken, TransientError
from crispedit.core.source import SOURCES, Source, register_source
from crispedit.core.stage import STAGES, BuildContext, FilterStage, Resources, Stage, StageParams, register_stage

__all__ = [
    "SOURCES", "STAGES", "BuildContext", "FilterStage", "Resources", "Source", "Stage", "StageBroken", "StageParams",
    "TransientError", "register_source", "register_stage",
]
