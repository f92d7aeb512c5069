"""The ``judge`` stage: an MLLM rates each pair, VIEScore-style, through the shared LLM client.

The questions, prompts, answer models and scores are crispedit.models.viescore's (shared with
``crispedit eval``): semantic consistency SC = min(editing success, over-editing) with both
images, perceptual quality PQ = min(naturalness, artifacts) with the edited image alone,
overall O = sqrt(SC * PQ). Every sub-score is its own column. The judge's reasoning (text) is
kept in ``provenance.judge`` because score columns are numbers. Answers are validated, retried
and cached by :mod:`crispedit.models.llm`. A server that fails after its retries raises
TransientError (the shard is built again on a rerun); an answer that stays invalid or a refusal
is the pair's own: its scores are missing and ``decide`` rejects it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from crispedit.core.bounds import Bound
from crispedit.core.redact import scrub_url
from crispedit.core.sample import Sample
from crispedit.core.stage import FilterStage, Resources, StageParams, register_stage
from crispedit.models.llm import LLMSettings
from crispedit.models.llm_stage import LLMStage
from crispedit.models.viescore import COLUMNS, QUALITY_PROMPT, SEMANTICS_PROMPT, Prompts, judge_scores, questions


class JudgeParams(StageParams):
    llm: LLMSettings = Field(description="the OpenAI-compatible endpoint and model (a vision model), see the instruct stage's llm block")
    semantics_prompt: str = Field(SEMANTICS_PROMPT, description="template of the semantic question: a path, or a name in filters/ beside the recipe or the bundled presets; `<instruction>` is replaced")
    quality_prompt: str = Field(QUALITY_PROMPT, description="template of the quality question: a path, or a name as semantics_prompt")
    max_side: int = Field(512, ge=32, description="images are scaled down to this longest side before they are sent")
    min_semantics: float | None = Field(None, ge=0, le=10, description="reject when SC (min of editing success and over-editing) is below this")
    min_quality: float | None = Field(None, ge=0, le=10, description="reject when PQ (min of naturalness and artifacts) is below this")
    min_overall: float | None = Field(None, ge=0, le=10, description="reject when O = sqrt(SC * PQ) is below this")
    score_rejects: bool = Field(
        True, description="also judge pairs an earlier filter rejected (their scores let refilter loosen); false saves requests",
    )
    cache: bool = Field(True, description="keep answers in the build's cache, so a rerun asks nothing twice")


@register_stage
class JudgeStage(LLMStage, FilterStage[JudgeParams]):
    """VIEScore-style semantic consistency and perceptual quality from a multimodal LLM."""

    kind = "judge"
    in_actor_pool = True  # one client (event loop, connection pool) per worker, whatever the parameters
    resources = Resources(num_cpus=1)
    default_batch_size = 32
    cites: ClassVar[tuple[str, ...]] = (
        "VIEScore (Ku et al. 2024) task `tie`: SC = min(success, over-editing), PQ = min(naturalness, artifacts), O = sqrt(SC*PQ)",
    )

    def inputs(self) -> set[str]:
        return {"source_image", "target_image", "instruction"}

    def score_columns(self) -> list[str]:
        return list(COLUMNS)

    def model_ids(self) -> dict[str, str]:
        return {"judge": f"{self.params.llm.model} @ {scrub_url(self.params.llm.base_url)}"}

    def thresholds(self) -> dict[str, tuple[Bound, Bound]]:
        p = self.params
        bounds = {"judge_semantics": (p.min_semantics, None), "judge_quality": (p.min_quality, None), "judge_overall": (p.min_overall, None)}
        return {k: v for k, v in bounds.items() if v != (None, None)}

    def accepts(self, sample: Sample) -> bool:
        return super().accepts(sample) if self.params.score_rejects else sample.alive

    def llm_cache_dir(self) -> Path | None:
        return self.context.cache_dir if self.params.cache else None

    def setup(self) -> None:
        folders = [self.context.recipe_dir / "filters", self.context.recipe_dir.parent / "filters", Path.cwd() / "filters"]
        self.prompts = Prompts.load(self.params.semantics_prompt, self.params.quality_prompt, folders)
        super().setup()

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        requests = []
        slots: list[tuple[int, str]] = []
        for i, s in enumerate(batch):
            if s.target_image is None:
                continue
            for question, request in questions(self.prompts, s.source_image, s.target_image, s.instruction, self.params.max_side):
                requests.append(request)
                slots.append((i, question))
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
