"""The stage contract under its old import path, for ``plugins:`` modules written against it.

It re-exports ``crispedit.core`` and imports no stage kind: the built-in kinds are listed
in ``crispedit.recipe.catalog``. New code imports ``crispedit.core.stage`` and
``crispedit.core.source`` directly.
"""

from crispedit.core.stage import STAGES, BuildContext, FilterStage, Resources, Stage, StageParams, register_stage
from crispedit.sources.images import SOURCES, Source, register_source

__all__ = ["SOURCES", "STAGES", "BuildContext", "FilterStage", "Resources", "Source", "Stage", "StageParams", "register_source", "register_stage"]
