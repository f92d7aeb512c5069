"""The VIEScore judge (TIGER-AI-Lab/VIEScore, task ``tie``): one set of questions for builds and evaluation.

Two questions per edit, each its own request:

* semantic consistency, with both images: ``editing_success`` (does the edit carry out the
  instruction) and ``over_editing`` (is nothing else changed), 0-10 each; SC = their minimum;
* perceptual quality, with the edited image only: ``naturalness`` and ``artifacts``, 0-10
  each; PQ = their minimum; overall O = sqrt(SC * PQ).

The ``judge`` filter (crispedit.filters.judge) and ``crispedit eval`` (crispedit.mgt.mllm_score)
both ask them with the same prompt templates (bundled presets ``judge_semantics.txt`` and
``judge_quality.txt``; ``<instruction>`` is replaced) and read the same answer models, so a
build and an eval judge an edit alike. A failed parse never becomes a made-up score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crispedit.core.presets import find_preset
from crispedit.models.llm_stage import image_url

INSTRUCTION_SLOT = "<instruction>"
#: A prompt template is text: a file larger than this (or a device, a FIFO) is refused before it is read.
TEMPLATE_MAX_BYTES = 1024**2
SEMANTICS_PROMPT = "judge_semantics.txt"
QUALITY_PROMPT = "judge_quality.txt"
#: The judge's score columns: SC, PQ, O, then each sub-score.
COLUMNS = (
    "judge_semantics", "judge_quality", "judge_overall",
    "judge_edit_success", "judge_over_editing", "judge_naturalness", "judge_artifacts",
)


class SemanticsAnswer(BaseModel):
    """The semantic-consistency answer (both images)."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str = Field(max_length=1000)
    editing_success: int = Field(ge=0, le=10)
    over_editing: int = Field(ge=0, le=10)


class QualityAnswer(BaseModel):
    """The perceptual-quality answer (the edited image alone)."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str = Field(max_length=1000)
    naturalness: int = Field(ge=0, le=10)
    artifacts: int = Field(ge=0, le=10)


@dataclass(frozen=True)
class Prompts:
    """The two question templates, read once."""

    semantics: str
    quality: str

    @classmethod
    def load(cls, semantics: str = SEMANTICS_PROMPT, quality: str = QUALITY_PROMPT, folders: list[Path] | None = None) -> Prompts:
        """Templates by path or name: in ``folders`` (a recipe's ``filters/``), else the bundled presets.

        A template is text a recipe may point anywhere: one over TEMPLATE_MAX_BYTES (or a device, a FIFO)
        is refused before it is read.
        """
        from crispedit.core.storage import read_input

        read = [read_input(find_preset("prompts", name, folders or []), TEMPLATE_MAX_BYTES).decode("utf-8") for name in (semantics, quality)]
        return cls(*read)


def user_message(text: str, images: list[Any], max_side: int) -> list[dict[str, Any]]:
    """One user turn: the text, then each image as a data URL scaled to ``max_side``."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": image_url(i, max_side)}} for i in images]
    return [{"role": "user", "content": parts}]


def questions(prompts: Prompts, source: Any, edited: Any, instruction: str | None, max_side: int,
              seed: int | None = None) -> list[tuple[str, Any]]:
    """(question, LLMRequest) for one edit: semantics when there is a source and an instruction, quality always."""
    from crispedit.models.llm import LLMRequest

    out: list[tuple[str, Any]] = []
    if source is not None and instruction:
        text = prompts.semantics.replace(INSTRUCTION_SLOT, instruction)
        out.append(("semantics", LLMRequest(user_message(text, [source, edited], max_side), SemanticsAnswer, seed=seed)))
    out.append(("quality", LLMRequest(user_message(prompts.quality, [edited], max_side), QualityAnswer, seed=seed)))
    return out


def judge_scores(sc: SemanticsAnswer | None, pq: QualityAnswer | None) -> dict[str, float | None]:
    """The seven columns from the two answers (None where an answer is missing)."""
    out: dict[str, float | None] = dict.fromkeys(COLUMNS)
    if sc is not None:
        out.update(judge_edit_success=float(sc.editing_success), judge_over_editing=float(sc.over_editing),
                   judge_semantics=float(min(sc.editing_success, sc.over_editing)))
    if pq is not None:
        out.update(judge_naturalness=float(pq.naturalness), judge_artifacts=float(pq.artifacts),
                   judge_quality=float(min(pq.naturalness, pq.artifacts)))
    if out["judge_semantics"] is not None and out["judge_quality"] is not None:
        out["judge_overall"] = math.sqrt(out["judge_semantics"] * out["judge_quality"])
    return out
