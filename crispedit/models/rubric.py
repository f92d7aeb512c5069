"""Reward-model judge rubrics (EditScore-, EditReward-, ImgEdit-Judge-style) and the self-ensemble of passes.

A rubric is a preset (``crispedit/presets/judges/NAME.yaml``, or a file of the same shape): a
prompt template, the images it is shown, the scores it answers with their native range, and how
an overall score combines them. Each answer is validated against a model built from that range
(a score outside it is an invalid answer, asked again with the error fed back); a score is mapped
linearly to 0-10 so thresholds and reports read alike across judges. The columns are
``PREFIX_SCORE`` and ``PREFIX_overall``.

Self-ensembles (EditScore's ``num_pass``): a judge asked ``passes`` times with distinct seeds at a
temperature above 0 gives each column the mean over passes and ``COLUMN_std``, their spread. A pass
whose answer stays invalid leaves the pair without scores: never a made-up or a partial mean.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from crispedit.core.presets import find_preset

#: How a rubric's overall score is made from its mapped scores, per pass.
COMBINE = {
    "min": min,
    "mean": statistics.fmean,
    "sqrt_product": lambda values: math.sqrt(math.prod(values)) if len(values) == 2 else math.prod(values) ** (1 / len(values)),
}
IMAGES = ("source", "target")


class RubricError(ValueError):
    """A rubric file that cannot be used (its path and key are in the message)."""


@dataclass(frozen=True)
class Rubric:
    """One reward-model judge: what it is asked, with which images, and how its answer becomes 0-10 scores."""

    name: str
    prefix: str
    template: str
    images: tuple[str, ...]
    scores: dict[str, tuple[float, float]]
    overall: str

    @classmethod
    def load(cls, name: str, folders: list[Path] | None = None) -> Rubric:
        """A bundled rubric by name (``editscore``, ``editreward``, ``imgedit``) or a YAML file; its template beside it."""
        from crispedit.core.located import LocatedError, load_located
        from crispedit.core.storage import read_input
        from crispedit.models.viescore import TEMPLATE_MAX_BYTES

        path = find_preset("judges", name, folders or [])
        try:
            data = load_located(path).data
        except LocatedError as error:
            raise RubricError("; ".join(str(p) for p in error.problems)) from None
        if not isinstance(data, dict):
            raise RubricError(f"{path}: a judge rubric is a mapping")
        try:
            scores = {str(k): (float(v[0]), float(v[1])) for k, v in dict(data["scores"]).items()}
            prefix, overall = str(data["prefix"]), str(data.get("overall", "mean"))
            images = tuple(str(i) for i in data.get("images", IMAGES))
            template_name = str(data["template"])
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise RubricError(f"{path}: needs prefix, template and scores (NAME: [low, high]): {error}") from None
        bad = [f"scores.{k}: {lo:g} >= {hi:g}" for k, (lo, hi) in scores.items() if lo >= hi]
        bad += [f"overall: {overall!r} is not one of {', '.join(COMBINE)}"] if overall not in COMBINE else []
        bad += [f"images: {i!r} is not one of {', '.join(IMAGES)}" for i in images if i not in IMAGES]
        bad += ["scores: none given"] if not scores else []
        if bad:
            raise RubricError(f"{path}: " + "; ".join(bad))
        template = read_input(path.parent / template_name, TEMPLATE_MAX_BYTES).decode("utf-8")
        return cls(path.stem, prefix, template, images, scores, overall)

    def columns(self) -> list[str]:
        """The mapped scores, then overall (all 0-10)."""
        return [f"{self.prefix}_{k}" for k in self.scores] + [f"{self.prefix}_overall"]

    def answer_model(self) -> type[BaseModel]:
        """The answer's schema: a short reasoning and each score within its native range."""
        fields: dict[str, Any] = {"reasoning": (str, Field(max_length=1000))}
        fields.update({k: (float, Field(ge=lo, le=hi)) for k, (lo, hi) in self.scores.items()})
        return create_model(f"{self.prefix.title()}Answer", __config__=ConfigDict(extra="forbid"), **fields)

    def request(self, source: Any, edited: Any, instruction: str | None, max_side: int, seed: int | None) -> Any:
        """The one question for an edit, or None when it lacks what the rubric shows (no source, no instruction)."""
        from crispedit.models.llm import LLMRequest
        from crispedit.models.viescore import INSTRUCTION_SLOT, user_message

        shown = {"source": source, "target": edited}
        if any(shown[i] is None for i in self.images) or (INSTRUCTION_SLOT in self.template and not instruction):
            return None
        text = self.template.replace(INSTRUCTION_SLOT, instruction or "")
        return LLMRequest(user_message(text, [shown[i] for i in self.images], max_side), self.answer_model(), seed=seed)

    def scores_of(self, answer: BaseModel) -> dict[str, float]:
        """One pass's columns: each score mapped to 0-10, and overall."""
        out = {f"{self.prefix}_{k}": 10.0 * (float(getattr(answer, k)) - lo) / (hi - lo) for k, (lo, hi) in self.scores.items()}
        out[f"{self.prefix}_overall"] = float(COMBINE[self.overall](list(out.values())))
        return out


def spread_columns(columns: list[str]) -> list[str]:
    """The spread column of each score of a self-ensemble."""
    return [f"{c}_std" for c in columns]


def ensemble(passes: list[dict[str, float | None]], columns: list[str]) -> dict[str, float | None]:
    """Mean and (population) spread over passes of each column; None where any pass lacks it."""
    out: dict[str, float | None] = {}
    for column in columns:
        values = [p.get(column) for p in passes]
        whole = all(v is not None for v in values) and bool(values)
        out[column] = statistics.fmean(values) if whole else None  # type: ignore[arg-type]
        if len(passes) > 1:
            out[f"{column}_std"] = statistics.pstdev(values) if whole else None  # type: ignore[arg-type]
    return out
