"""Every built-in source and stage kind: the one list, registered on import.

Importing a kind's module registers it (``register_stage`` / ``register_source``). Only the
recipe, the engine, the post-build commands and the CLI import this module; the contract in
``crispedit.core`` registers nothing, so a stage module can import it without loading every
other kind. No module listed here imports torch at module level, so ``crispedit validate``
stays instant (tests/recipe/test_recipe.py checks it).
"""

from crispedit.classical import copy, stages  # noqa: F401
from crispedit.core.source import SOURCES
from crispedit.core.stage import STAGES
from crispedit.derived.stages import compose, inverse, multi_turn  # noqa: F401
from crispedit.dit4edit import stages as dit4edit_stages  # noqa: F401
from crispedit.editors import edit_model, recaption  # noqa: F401
from crispedit.filters import (  # noqa: F401
    clip_filter,
    dedupe,
    judge,
    locality_filter,
    pixel_change,
    safety_filter,
    select,
)
from crispedit.instruct import stages as instruct_stages  # noqa: F401
from crispedit.masks.stages import ground, mask_filter, pixel_threshold  # noqa: F401
from crispedit.sdxl.stages import inpaint, p2p, refine, sdxl_source, style  # noqa: F401
from crispedit.sources import hf, images, parquet, text, webdataset  # noqa: F401
from crispedit.video.stages import video_caption, video_pairs, videos  # noqa: F401

__all__ = ["SOURCES", "STAGES"]
