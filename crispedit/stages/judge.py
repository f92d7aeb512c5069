"""The ``judge`` stage: an MLLM rates each pair, VIEScore-style, through the shared LLM client.

Two questions per pair, as VIEScore's ``tie`` task asks them (TIGER-AI-Lab/VIEScore):

* semantic consistency, with both images: ``editing_success`` (does the target carry out the
  instruction) and ``over_editing`` (is nothing else changed), 0-10 each; SC = their minimum;
* perceptual quality, with the edited image only: ``naturalness`` and ``artifacts``, 0-10
  each; PQ = their minimum; overall O = sqrt(SC * PQ).

Every sub-score is its own column. The judge's reasoning (text) is kept in
``provenance.judge`` because score columns are numbers. Prompts are templates in
``filters/`` (``<instruction>`` is replaced), images go as PNG data URLs, and answers are
validated, retried and cached by :mod:`crispedit.llm`. A server that fails after its
retries raises TransientError (the shard is built again on a rerun); an answer that stays
invalid or a refusal is the pair's own: its scores are missing and ``decide`` rejects it.

Unlike VIEScore, a failed parse never becomes a made-up score.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from crispedit.llm import LLMSettings
from crispedit.redact import scrub_url
from crispedit.sample import Sample
from crispedit.stages.base import FilterStage, Resources, StageParams, register_stage
from crispedit.stages.clip_filter import Bound
from crispedit.storage import read_input

INSTRUCTION_SLOT = "<instruction>"
#: A prompt template is text: a file larger than this (or a device, a FIFO) is refused before it is read.
TEMPLATE_MAX_BYTES = 1024**2
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


class JudgeParams(StageParams):
    llm: LLMSettings = Field(description="the OpenAI-compatible endpoint and model (a vision model), see the instruct stage's llm block")
    semantics_prompt: str = Field("judge_semantics.txt", description="template of the semantic question, in filters/ (or a path); `<instruction>` is replaced")
    quality_prompt: str = Field("judge_quality.txt", description="template of the quality question, in filters/ (or a path)")
    max_side: int = Field(512, ge=32, description="images are scaled down to this longest side before they are sent")
    min_semantics: float | None = Field(None, ge=0, le=10, description="reject when SC (min of editing success and over-editing) is below this")
    min_quality: float | None = Field(None, ge=0, le=10, description="reject when PQ (min of naturalness and artifacts) is below this")
    min_overall: float | None = Field(None, ge=0, le=10, description="reject when O = sqrt(SC * PQ) is below this")
    score_rejects: bool = Field(
        True, description="also judge pairs an earlier filter rejected (their scores let refilter loosen); false saves requests",
    )
    cache: bool = Field(True, description="keep answers in the build's cache, so a rerun asks nothing twice")


def data_url(image: np.ndarray, max_side: int) -> str:
    """A PNG data URL of an RGB array, scaled down (never up) to ``max_side``."""
    from PIL import Image

    picture = Image.fromarray(image)
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def find_template(name: str, recipe_dir: Path) -> Path:
    """A prompt template: the path itself, or NAME in filters/ beside the recipe, above it, here, or crispedit's own."""
    import crispedit

    given = Path(name)
    if given.is_absolute() or given.is_file():
        return given
    folders = [recipe_dir / "filters", recipe_dir.parent / "filters", Path.cwd() / "filters", Path(crispedit.__file__).resolve().parents[1] / "filters"]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"judge prompt {name!r} not found (looked in {', '.join(map(str, folders))})")


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


@register_stage
class JudgeStage(FilterStage):
    """VIEScore-style semantic consistency and perceptual quality from a multimodal LLM."""

    kind = "judge"
    Params = JudgeParams
    params: JudgeParams
    uses_models = True  # one client (event loop, connection pool) per worker
    resources = Resources(num_cpus=1)
    default_batch_size = 32
    columns = COLUMNS
    requires = ("source_image", "target_image", "instruction")
    cites: ClassVar[tuple[str, ...]] = (
        "VIEScore (Ku et al. 2024) task `tie`: SC = min(success, over-editing), PQ = min(naturalness, artifacts), O = sqrt(SC*PQ)",
    )

    def model_ids(self) -> dict[str, str]:
        return {"judge": f"{self.params.llm.model} @ {scrub_url(self.params.llm.base_url)}"}

    def thresholds(self) -> dict[str, tuple[Bound, Bound]]:
        p = self.params
        bounds = {"judge_semantics": (p.min_semantics, None), "judge_quality": (p.min_quality, None), "judge_overall": (p.min_overall, None)}
        return {k: v for k, v in bounds.items() if v != (None, None)}

    def accepts(self, sample: Sample) -> bool:
        return super().accepts(sample) if self.params.score_rejects else sample.alive

    def setup(self) -> None:
        from crispedit.llm import LLMClient

        p = self.params
        self.templates = {
            "semantics": read_input(find_template(p.semantics_prompt, self.context.recipe_dir), TEMPLATE_MAX_BYTES).decode("utf-8"),
            "quality": read_input(find_template(p.quality_prompt, self.context.recipe_dir), TEMPLATE_MAX_BYTES).decode("utf-8"),
        }
        self.client = LLMClient(p.llm, self.context.cache_dir if p.cache else None, stage=self.name)

    def _messages(self, text: str, images: list[np.ndarray]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
        parts += [{"type": "image_url", "image_url": {"url": data_url(i, self.params.max_side)}} for i in images]
        return [{"role": "user", "content": parts}]

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        from crispedit.llm import LLMRequest

        requests: list[LLMRequest] = []
        slots: list[tuple[int, str]] = []
        for i, s in enumerate(batch):
            if s.target_image is None:
                continue
            if s.source_image is not None and s.instruction:
                text = self.templates["semantics"].replace(INSTRUCTION_SLOT, s.instruction)
                requests.append(LLMRequest(self._messages(text, [s.source_image, s.target_image]), SemanticsAnswer))
                slots.append((i, "semantics"))
            requests.append(LLMRequest(self._messages(self.templates["quality"], [s.target_image]), QualityAnswer))
            slots.append((i, "quality"))
        answers = self.client.ask_many(requests)  # TransientError when the server stays unavailable
        found: dict[int, dict[str, Any]] = {i: {} for i in range(len(batch))}
        for (i, question), answer in zip(slots, answers, strict=True):
            found[i][question] = answer
            batch[i].add_usage(self.name, **answer.usage)
        out: list[dict[str, float | None]] = []
        for i, s in enumerate(batch):
            sc, pq = found[i].get("semantics"), found[i].get("quality")
            record: dict[str, Any] = {"model": self.params.llm.model}
            errors = []
            for name, answer in (("semantics", sc), ("quality", pq)):
                if answer is None:
                    errors.append(f"{name}: not asked (no {'instruction or source' if name == 'semantics' else 'target'})")
                elif answer.value is not None:
                    record[f"{name}_reasoning"] = answer.value.reasoning
                else:
                    errors.append(f"{name}: {answer.error}")
            if errors:
                record["error"] = "; ".join(errors)
            s.provenance["judge"] = record
            out.append(judge_scores(sc.value if sc else None, pq.value if pq else None))  # type: ignore[arg-type]
        return out

    def decide(self, scores: dict[str, float | None]) -> str | None:
        for column, (low, _) in self.thresholds().items():
            value = scores.get(column)
            if value is None:
                return f"no judge score: {column} missing (the judge gave no valid answer; see provenance.judge.error)"
            if low is not None and value < low:
                label = {"judge_semantics": "edit not followed", "judge_quality": "low quality", "judge_overall": "low judge score"}[column]
                return f"{label}: {column} {value:g} < {low:g}"
        return None
