"""The ``video_caption`` stage: a vision model writes the instruction for a mined frame pair.

The model sees both frames in one message, labelled ("Frame A, before" and "Frame B, after",
each an image part holding a data URL), and answers with the instruction that turns A into B,
a caption of each frame, the objects the edit changes and a category from EditWorld's video
categories (spatial transformation, physical transformation, story type, exaggeration). The
answer is a JSON object validated against its schema and cached by the LLM client
(crispedit.models.llm), like every LLM answer in crispedit. ImgEdit's motion captioner meant to do
this but never attached its images (research/video.md §1).

``mode: two_step`` follows VINCIE's shape: first the model describes both frames and lists
what changed (it sees the images), then it rewrites that description as one instruction
(text only). ``backend: template``, and any backend under ``--tiny``, answers offline from
what the mining stage measured (``meta.video_change``: which way the moving part went and its
colour), e.g. "make the red object move to the left".
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from crispedit.core.sample import Sample, derive_seed
from crispedit.core.stage import Stage, StageParams, register_stage
from crispedit.models.llm import LLMSettings
from crispedit.models.llm_stage import LLMStage, image_url

log = logging.getLogger("crispedit")

#: EditWorld's categories for its video branch (arXiv:2405.14785; their definitions come from the editworld taxonomy).
VIDEO_CATEGORIES = ("spatial_transformation", "physical_transformation", "story_type", "exaggeration")

DIRECTIONS = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}


class VideoCaptionParams(StageParams):
    backend: Literal["template", "openai"] = Field("template", description="'template': offline, from the measured change; 'openai': a vision model")
    mode: Literal["one_step", "two_step"] = Field(
        "one_step", description="one_step: one request per pair; two_step: describe the change, then rewrite it as an instruction (VINCIE)"
    )
    categories: list[str] = Field(
        default_factory=lambda: list(VIDEO_CATEGORIES), min_length=1,
        description="categories the answer may choose from (EditWorld's video categories); the template backend uses spatial_transformation",
    )
    max_image_side: int = Field(512, ge=64, description="frames are scaled down to this long side before they are sent")
    image_format: Literal["jpeg", "png"] = Field("jpeg", description="encoding of the frames in the data URLs")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the frames sent")
    subject_word: str = Field("object", min_length=1, description="template backend: the noun for the moving part ('the red object')")
    llm: LLMSettings | None = Field(None, description="openai backend: endpoint, model, key variable, limits and prices")

    @field_validator("categories")
    @classmethod
    def _known(cls, categories: list[str]) -> list[str]:
        unknown = [c for c in categories if c not in VIDEO_CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: {', '.join(VIDEO_CATEGORIES)}")
        return list(dict.fromkeys(categories))

    @model_validator(mode="after")
    def _llm_given(self) -> VideoCaptionParams:
        if self.backend == "openai" and self.llm is None:
            raise ValueError("backend openai needs an `llm:` block (base_url, model, api_key_env...)")
        return self


# --- answer schemas -------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid")


@functools.cache
def pair_answer(categories: tuple[str, ...]) -> type[BaseModel]:
    """One-step answer: everything at once, the category limited to the recipe's list."""
    return create_model(  # type: ignore[call-overload, no-any-return]
        "VideoPairAnswer",
        __config__=_STRICT,
        usable=(bool, Field(description="false when A and B do not show the same scene and subject, or show no clear change")),
        source_caption=(str, Field(min_length=3, max_length=400, description="frame A in one sentence")),
        target_caption=(str, Field(min_length=3, max_length=400, description="frame B in one sentence")),
        instruction=(str, Field(min_length=3, max_length=300, description="the imperative edit that turns A into B")),
        edit_objects=(list[str], Field(max_length=8, description="objects the edit changes")),
        category=(Literal[categories], Field(description="the category of the change")),  # type: ignore[valid-type]
    )


class ChangeDescription(BaseModel):
    """Two-step mode, step 1: what the frames show and what changed (the model sees the images)."""

    model_config = _STRICT
    usable: bool = Field(description="false when A and B do not show the same scene and subject, or show no clear change")
    source_caption: str = Field(min_length=3, max_length=400, description="frame A in one sentence")
    target_caption: str = Field(min_length=3, max_length=400, description="frame B in one sentence")
    changes: list[str] = Field(min_length=1, max_length=5, description="each difference between A and B, most important first")


@functools.cache
def rewrite_answer(categories: tuple[str, ...]) -> type[BaseModel]:
    """Two-step mode, step 2: the description rewritten as one instruction (text only)."""
    return create_model(  # type: ignore[call-overload, no-any-return]
        "VideoPairInstruction",
        __config__=_STRICT,
        instruction=(str, Field(min_length=3, max_length=300, description="the imperative edit that turns A into B")),
        edit_objects=(list[str], Field(max_length=8, description="objects the edit changes")),
        category=(Literal[categories], Field(description="the category of the change")),  # type: ignore[valid-type]
    )


# --- prompts ----------------------------------------------------------------------------------


def _definitions(categories: tuple[str, ...]) -> str:
    from crispedit.instruct.taxonomies import load_taxonomy

    taxonomy = load_taxonomy("editworld")
    return "\n".join(f"- {name}: {' '.join(taxonomy.categories[name].definition.split())}" for name in categories)


RULES = (
    "Frame A is the input image and frame B the edited result; both come from one shot of a video.\n"
    "Write the instruction a person would give an image editor to turn A into B: imperative, one sentence, "
    "about the change of the subject only (what it does, where it moves, how it turns or transforms), naming it. "
    "Do not describe the background unless it is what changed. Never mention frames, videos, cameras or time."
)


def pair_messages(url_a: str, url_b: str, categories: tuple[str, ...], two_step: bool) -> list[dict[str, Any]]:
    """System and user messages with both frames as labelled image parts of one user message."""
    if two_step:
        task = ("Describe frame A and frame B in one sentence each and list every difference between them, "
                "most important first. Set usable to false when they do not show the same scene and subject, or nothing clear changed.")
    else:
        task = (f"{RULES}\nCaption A and B in one sentence each, list the objects the edit changes, and choose the category:\n"
                f"{_definitions(categories)}\nSet usable to false when A and B do not show the same scene and subject, or nothing clear changed.")
    system = "You turn two frames of one video into an image-editing example. Answer with one JSON object."
    content = [
        {"type": "text", "text": task},
        {"type": "text", "text": "Frame A (before):"},
        {"type": "image_url", "image_url": {"url": url_a}},
        {"type": "text", "text": "Frame B (after):"},
        {"type": "image_url", "image_url": {"url": url_b}},
    ]
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def rewrite_messages(description: ChangeDescription, categories: tuple[str, ...]) -> list[dict[str, Any]]:
    """Step 2 of two_step: the description of step 1 in, one instruction out."""
    changes = "\n".join(f"- {c}" for c in description.changes)
    text = (f"{RULES}\nFrame A: {description.source_caption}\nFrame B: {description.target_caption}\n"
            f"What changed:\n{changes}\nRewrite this as one instruction, list the objects it changes, and choose the category:\n"
            f"{_definitions(categories)}")
    return [{"role": "system", "content": "You write image-editing instructions. Answer with one JSON object."},
            {"role": "user", "content": text}]


# --- the stage ----------------------------------------------------------------------------------


@register_stage
class VideoCaptionStage(LLMStage, Stage[VideoCaptionParams]):
    """A vision model sees both frames of a pair and writes the instruction, captions, objects and category."""

    kind = "video_caption"
    default_batch_size = 64

    def inputs(self) -> set[str]:
        return {"source_image", "target_image"}

    def outputs(self) -> set[str]:
        return {"instruction", "source_caption", "target_caption", "edit_objects", "task"}

    def model_ids(self) -> dict[str, str]:
        if self.params.backend != "openai" or self.params.llm is None:
            return {}
        if self.context.tiny:
            return {"vlm": "template (tiny)"}
        from crispedit.core.redact import scrub_url

        return {"vlm": f"{self.params.llm.model} at {scrub_url(self.params.llm.base_url)}"}

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        live = []
        for sample in batch:
            if sample.source_image is None or sample.target_image is None:
                sample.fail(self.name, "no pair: video_caption needs source_image and target_image (run video_pairs first)")
            else:
                live.append(sample)
        if self.offline:
            self._template(live)
        elif self.params.mode == "two_step":
            self._two_step(live)
        else:
            self._one_step(live)
        return batch

    # -- offline ----------------------------------------------------------------------------
    def _template(self, batch: list[Sample]) -> None:
        self.warn_offline("the template backend answers (same fields)")
        backend = "template (tiny)" if self.params.backend == "openai" else "template"
        category = "spatial_transformation" if "spatial_transformation" in self.params.categories else self.params.categories[0]
        for sample in batch:
            change = sample.meta.get("video_change") or {}
            colour = change.get("colour")
            thing = f"{colour} {self.params.subject_word}" if colour else self.params.subject_word
            direction = change.get("direction")
            if direction in DIRECTIONS:
                instruction = f"make the {thing} move {DIRECTIONS[direction]}"
                after = f"with the {thing} moved {DIRECTIONS[direction]}"
            else:
                instruction = f"show the {thing} a moment later"
                after = f"with the {thing} a moment later"
            before = sample.source_caption or f"a scene with a {thing}"
            sample.instruction = instruction
            sample.source_caption = before
            sample.target_caption = f"{before}, {after}"
            sample.edit_objects = [thing]
            sample.task = category
            sample.provenance["video_caption"] = {"backend": backend, "category": category, "from": "measured change"}

    # -- a vision model -----------------------------------------------------------------------
    def _one_step(self, batch: list[Sample]) -> None:
        from crispedit.models.llm import LLMRequest

        categories = tuple(self.params.categories)
        schema = pair_answer(categories)
        requests = [LLMRequest(pair_messages(*self._urls(s), categories, two_step=False), schema, seed=self._seed(s)) for s in batch]
        for sample, answer in zip(batch, self.client.ask_many(requests), strict=True):
            sample.add_usage(self.name, **answer.usage)
            if answer.value is None:
                sample.fail(self.name, answer.error or "llm-invalid: no answer")
                continue
            value: Any = answer.value
            if not value.usable:
                sample.fail(self.name, "unusable pair: the model saw no single clear change of one subject between the frames")
                continue
            self._fill(sample, value.instruction, value.source_caption, value.target_caption, value.edit_objects, value.category)

    def _two_step(self, batch: list[Sample]) -> None:
        from crispedit.models.llm import LLMRequest

        categories = tuple(self.params.categories)
        first = [LLMRequest(pair_messages(*self._urls(s), categories, two_step=True), ChangeDescription, seed=self._seed(s)) for s in batch]
        described: list[tuple[Sample, Any]] = []
        for sample, answer in zip(batch, self.client.ask_many(first), strict=True):
            sample.add_usage(self.name, **answer.usage)
            if answer.value is None:
                sample.fail(self.name, answer.error or "llm-invalid: no answer")
            elif not answer.value.usable:  # type: ignore[attr-defined]
                sample.fail(self.name, "unusable pair: the model saw no single clear change of one subject between the frames")
            else:
                described.append((sample, answer.value))
        second = [LLMRequest(rewrite_messages(d, categories), rewrite_answer(categories), seed=self._seed(s)) for s, d in described]
        for (sample, description), answer in zip(described, self.client.ask_many(second), strict=True):
            sample.add_usage(self.name, **answer.usage)
            if answer.value is None:
                sample.fail(self.name, answer.error or "llm-invalid: no answer")
                continue
            value: Any = answer.value
            self._fill(sample, value.instruction, description.source_caption, description.target_caption, value.edit_objects,
                       value.category, changes=list(description.changes))

    def _fill(self, sample: Sample, instruction: str, before: str, after: str, objects: list[str], category: str, **extra: Any) -> None:
        assert self.params.llm is not None
        sample.instruction = instruction.strip()
        sample.source_caption = before.strip()
        sample.target_caption = after.strip()
        sample.edit_objects = [o.strip() for o in objects if o.strip()]
        sample.task = category
        sample.provenance["video_caption"] = {
            "backend": "openai", "model": self.params.llm.model, "mode": self.params.mode, "category": category,
            "seed": self._seed(sample), "temperature": self.params.llm.temperature, **extra,
        }

    def _seed(self, sample: Sample) -> int:
        seed = sample.seed("video-caption")
        if self.params.llm is not None and self.params.llm.seed is not None:
            seed = derive_seed(self.params.llm.seed, seed)
        return seed

    def _urls(self, sample: Sample) -> tuple[str, str]:
        p = self.params
        source, target = (image_url(i, p.max_image_side, p.image_format, p.jpeg_quality) for i in (sample.source_image, sample.target_image))
        return source, target
