"""GEdit-Bench-style MLLM scoring of edits: the build's VIEScore judge (crispedit.models.viescore).

GEdit-Bench scores an edit with a vision-language model following VIEScore: semantic
consistency SC (did the edit do what the instruction asked, without over-editing) and
perceptual quality PQ (natural, free of artifacts), each on 0-10; overall O = sqrt(SC * PQ).
The questions, the prompt templates and the answer models are the ``judge`` filter's, so an
edit is judged the same way in a build and in an eval; the columns are named ``mllm_*``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from crispedit.models.viescore import Prompts, judge_scores, questions

#: eval column -> the judge's column it is
COLUMNS = {"mllm_semantics": "judge_semantics", "mllm_quality": "judge_quality", "mllm_overall": "judge_overall"}
#: images are scaled down to this longest side before they are sent
MAX_SIDE = 1024


class MLLMScorer:
    """Scores a list of edits in one `ask_many` call (the client bounds concurrency and caches)."""

    def __init__(self, settings: Any, cache_dir: str | Path, prompts: Prompts | None = None) -> None:
        from crispedit.models.llm import LLMClient

        self.client = LLMClient(settings, Path(cache_dir), "eval-mllm")
        self.prompts = prompts or Prompts.load()

    def score(self, items: list[tuple[Image.Image, Image.Image, str]]) -> list[dict[str, float | None | str]]:
        requests = []
        slots: list[tuple[int, str]] = []
        for i, (source, edited, instruction) in enumerate(items):
            for question, request in questions(self.prompts, source, edited, instruction, MAX_SIDE):
                requests.append(request)
                slots.append((i, question))
        found: list[dict[str, Any]] = [{} for _ in items]
        for (i, question), answer in zip(slots, self.client.ask_many(requests), strict=True):
            found[i][question] = answer
        out: list[dict[str, float | None | str]] = []
        for answers in found:
            sc, pq = answers.get("semantics"), answers.get("quality")
            scores = judge_scores(sc.value if sc else None, pq.value if pq else None)
            errors = [f"{name}: {a.error or 'no answer'}" for name, a in (("semantics", sc), ("quality", pq)) if a is not None and a.value is None]
            if sc is None:
                errors.append("semantics: not asked (no instruction)")
            row: dict[str, float | None | str] = {column: scores[judge] for column, judge in COLUMNS.items()}
            row["mllm_error"] = "; ".join(errors) or None
            out.append(row)
        return out
