"""The ``judge`` stage: an MLLM rates each pair, VIEScore-style, through the shared LLM client.

The questions, prompts, answer models and scores are crispedit.models.viescore's (shared with
``crispedit eval``): semantic consistency SC = min(editing success, over-editing) with both
images, perceptual quality PQ = min(naturalness, artifacts) with the edited image alone,
overall O = sqrt(SC * PQ). Every sub-score is its own column. The judge's reasoning (text) is
kept in ``provenance.judge`` because score columns are numbers. Answers are validated, retried
and cached by :mod:`crispedit.models.llm`. A server that fails after its retries raises
TransientError (the shard is built again on a rerun); an answer that stays invalid or a refusal
is the pair's own: its scores are missing and ``decide`` rejects it.

``rubric:`` swaps VIEScore for a reward-model judge (crispedit.models.rubric: EditScore-,
EditReward-, ImgEdit-Judge-style presets, or a file), one question per pair, columns
``PREFIX_SCORE`` mapped to 0-10. ``passes: K`` asks every question K times with seeds
``seed, seed+1, ...`` (distinct requests, distinct cache entries) and keeps the mean of each
column and ``COLUMN_std``; one pass that stays invalid leaves the pair unscored, and its raw
answer is kept in ``provenance.judge.raw``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from crispedit.core.bounds import Bound
from crispedit.core.redact import scrub_url
from crispedit.core.sample import Sample
from crispedit.core.stage import FilterStage, Resources, StageParams, register_stage
from crispedit.models.llm import LLMSettings
from crispedit.models.llm_stage import LLMStage
from crispedit.models.rubric import Rubric, ensemble, spread_columns
from crispedit.models.viescore import COLUMNS, QUALITY_PROMPT, SEMANTICS_PROMPT, Prompts, judge_scores, questions

VIESCORE_LABELS = {"judge_semantics": "edit not followed", "judge_quality": "low quality", "judge_overall": "low judge score"}


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
    rubric: str | None = Field(
        None, description="a reward-model judge instead of VIEScore: editscore, editreward, imgedit (bundled presets) or a rubric file",
    )
    passes: int = Field(1, ge=1, le=16, description="ask each question this many times (distinct seeds; needs llm.temperature > 0); "
                        "columns hold the mean, COLUMN_std the spread")
    min_scores: dict[str, float] = Field(default_factory=dict, description="reject when a named score column is below its value (0-10)")

    @model_validator(mode="after")
    def _consistent(self) -> JudgeParams:
        if self.passes > 1 and self.llm.temperature == 0:
            raise ValueError("passes > 1 needs llm.temperature > 0: at temperature 0 every pass answers alike")
        if self.rubric is not None and (self.min_semantics is not None or self.min_quality is not None):
            raise ValueError("min_semantics/min_quality are VIEScore's; with a rubric use min_overall or min_scores")
        return self


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

    def base_columns(self) -> list[str]:
        """The columns of one pass (VIEScore's, or the rubric's)."""
        if self.params.rubric is None:
            return list(COLUMNS)
        return self._rubric().columns()

    def score_columns(self) -> list[str]:
        base = self.base_columns()
        return base + (spread_columns(base) if self.params.passes > 1 else [])

    def _rubric(self) -> Rubric:
        if getattr(self, "rubric", None) is None:
            assert self.params.rubric is not None
            self.rubric = Rubric.load(self.params.rubric, self._folders())
        return self.rubric

    def _folders(self) -> list[Path]:
        return [self.context.recipe_dir / "filters", self.context.recipe_dir.parent / "filters", Path.cwd() / "filters"]

    def model_ids(self) -> dict[str, str]:
        return {"judge": f"{self.params.llm.model} @ {scrub_url(self.params.llm.base_url)}"}

    def thresholds(self) -> dict[str, tuple[Bound, Bound]]:
        p = self.params
        overall = "judge_overall" if p.rubric is None else f"{self._rubric().prefix}_overall"
        bounds: dict[str, tuple[Bound, Bound]] = {"judge_semantics": (p.min_semantics, None), "judge_quality": (p.min_quality, None),
                                                  overall: (p.min_overall, None)}
        bounds.update({k: (v, None) for k, v in p.min_scores.items()})
        return {k: v for k, v in bounds.items() if v != (None, None)}

    def accepts(self, sample: Sample) -> bool:
        return super().accepts(sample) if self.params.score_rejects else sample.alive

    def llm_cache_dir(self) -> Path | None:
        return self.context.cache_dir if self.params.cache else None

    def setup(self) -> None:
        if self.params.rubric is None:
            self.prompts = Prompts.load(self.params.semantics_prompt, self.params.quality_prompt, self._folders())
        else:
            self._rubric()
        super().setup()

    def _seeds(self) -> list[int | None]:
        """One seed per pass: none (the settings') for a single pass, else distinct ones from the llm or build seed."""
        if self.params.passes == 1:
            return [None]
        base = self.params.llm.seed if self.params.llm.seed is not None else self.context.seed
        return [base + k for k in range(self.params.passes)]

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        requests = []
        slots: list[tuple[int, int, str]] = []
        p = self.params
        for i, s in enumerate(batch):
            if s.target_image is None:
                continue
            for k, seed in enumerate(self._seeds()):
                if p.rubric is None:
                    asked = questions(self.prompts, s.source_image, s.target_image, s.instruction, p.max_side, seed)
                else:
                    request = self._rubric().request(s.source_image, s.target_image, s.instruction, p.max_side, seed)
                    asked = [("rubric", request)] if request is not None else []
                for question, request in asked:
                    requests.append(request)
                    slots.append((i, k, question))
        answers = self.client.ask_many(requests)  # TransientError when the server stays unavailable
        found: dict[tuple[int, int], dict[str, Any]] = {}
        for (i, k, question), answer in zip(slots, answers, strict=True):
            found.setdefault((i, k), {})[question] = answer
            batch[i].add_usage(self.name, **answer.usage)
        return [self._pair_scores(s, [found.get((i, k), {}) for k in range(p.passes)]) for i, s in enumerate(batch)]

    def _pair_scores(self, sample: Sample, passes: list[dict[str, Any]]) -> dict[str, float | None]:
        """The pair's columns from its passes' answers; its reasoning, errors and raw answers into provenance."""
        record: dict[str, Any] = {"model": self.params.llm.model}
        if self.params.rubric is not None:
            record["rubric"] = self._rubric().name
        names = ("semantics", "quality") if self.params.rubric is None else ("rubric",)
        errors: list[str] = []
        raws: list[str] = []
        per_pass: list[dict[str, float | None]] = []
        reasons: dict[str, list[str]] = {n: [] for n in names}
        for k, answers in enumerate(passes):
            tag = f"pass {k}: " if len(passes) > 1 else ""
            for name in names:
                answer = answers.get(name)
                if answer is None:
                    needs = {"semantics": "instruction or source", "quality": "target", "rubric": "image or instruction the rubric shows"}[name]
                    errors.append(f"{tag}{name}: not asked (no {needs})")
                elif answer.value is not None:
                    reasons[name].append(answer.value.reasoning)
                else:
                    errors.append(f"{tag}{name}: {answer.error}")
                    if answer.raw is not None:
                        raws.append(f"{tag}{name}: {answer.raw}")
            if self.params.rubric is None:
                sc, pq = answers.get("semantics"), answers.get("quality")
                per_pass.append(judge_scores(sc.value if sc else None, pq.value if pq else None))  # type: ignore[arg-type]
            else:
                answer = answers.get("rubric")
                value = answer.value if answer is not None else None
                per_pass.append(self._rubric().scores_of(value) if value is not None else {})
        for name, texts in reasons.items():
            if texts:
                key = "reasoning" if name == "rubric" else f"{name}_reasoning"
                record[key] = texts[0] if len(passes) == 1 else texts
        if errors:
            record["error"] = "; ".join(errors)
        if raws:
            record["raw"] = "; ".join(raws)
        sample.provenance["judge"] = record
        return ensemble(per_pass, self.base_columns())

    def decide(self, scores: dict[str, float | None]) -> str | None:
        if self.params.rubric is not None and scores.get(overall := f"{self._rubric().prefix}_overall") is None:
            # a reward model's answer that stayed unparsable or out of range: a reject, never a made-up score
            return f"no judge score: {overall} missing (the judge gave no valid answer; see provenance.judge.error and .raw)"
        for column, (low, _) in self.thresholds().items():
            value = scores.get(column)
            if value is None:
                return f"no judge score: {column} missing (the judge gave no valid answer; see provenance.judge.error)"
            if low is not None and value < low:
                label = VIESCORE_LABELS.get(column, "low judge score")
                return f"{label}: {column} {value:g} < {low:g}"
        return None
