"""Every built-in stage and source kind, registered on import."""

from crispedit.core.stage import (
    STAGES,
    BuildContext,
    Stage,
    StageParams,
    register_stage,
)
from crispedit.stages import (  # noqa: F401
    classical,
    clip_filter,
    copy,
    dedupe,
    dit4edit,
    generate_inpaint,
    generate_p2p,
    generate_refine,
    generate_source,
    generate_style,
    ground,
    instruct,
    judge,
    locality,
    mask_filter,
    pixel_change,
    pixel_threshold,
    safety,
    select,
    source,
    source_hf,
    source_parquet,
    source_text,
    source_videos,
    source_webdataset,
    video_caption,
    video_pairs,
)
from crispedit.stages.source import SOURCES, Source, register_source

__all__ = ["SOURCES", "STAGES", "BuildContext", "Source", "Stage", "StageParams", "register_source", "register_stage"]
