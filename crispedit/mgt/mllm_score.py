"""GEdit-Bench-style MLLM scoring of edits through the project's LLM client.

GEdit-Bench scores an edit with a vision-language model following VIEScore: semantic
consistency SC (did the edit do what the instruction asked, without over-editing) and
perceptual quality PQ (natural, free of artifacts), each on 0-10; overall O = sqrt(SC * PQ).
Here each sub-score is a field of a pydantic answer model, so the client validates the
ranges; SC = min(success, not over-edited), PQ = min(naturalness, no artifacts), as VIEScore
takes the minimum of its sub-questions. The images go as PNG data URLs (OpenAI chat format).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

PROMPT = (
    "You are judging an image edit. The first image is the original, the second the edited one.\n"
    "Instruction: {instruction}\n"
    "Score each from 0 to 10: editing_success (10 = the instruction is fully carried out), "
    "over_editing (10 = nothing was changed beyond what the instruction asks), naturalness of the "
    "edited image (10 = looks like a real photo or a coherent picture), artifacts (10 = no visible "
    "artifacts, distortions or blur). Give one short reason."
)


class EditJudgement(BaseModel):
    editing_success: int = Field(ge=0, le=10)
    over_editing: int = Field(ge=0, le=10)
    naturalness: int = Field(ge=0, le=10)
    artifacts: int = Field(ge=0, le=10)
    reason: str = Field(max_length=500)

    def scores(self) -> dict[str, float]:
        sc = float(min(self.editing_success, self.over_editing))
        pq = float(min(self.naturalness, self.artifacts))
        return {"mllm_semantics": sc, "mllm_quality": pq, "mllm_overall": math.sqrt(sc * pq)}


def data_url(image: Image.Image, max_side: int = 1024) -> str:
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def judgement_messages(source: Image.Image, edited: Image.Image, instruction: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "text", "text": PROMPT.format(instruction=instruction)},
        {"type": "image_url", "image_url": {"url": data_url(source)}},
        {"type": "image_url", "image_url": {"url": data_url(edited)}},
    ]}]


class MLLMScorer:
    """Scores a list of edits in one `ask_many` call (the client bounds concurrency and caches)."""

    def __init__(self, settings: Any, cache_dir: str | Path) -> None:
        from crispedit.models.llm import LLMClient

        self.client = LLMClient(settings, Path(cache_dir), "eval-mllm")

    def score(self, items: list[tuple[Image.Image, Image.Image, str]]) -> list[dict[str, float | None | str]]:
        from crispedit.models.llm import LLMRequest

        requests = [LLMRequest(messages=judgement_messages(s, e, i), schema=EditJudgement) for s, e, i in items]
        out: list[dict[str, float | None | str]] = []
        for answer in self.client.ask_many(requests):
            value = getattr(answer, "value", None)
            if value is None:
                out.append({"mllm_semantics": None, "mllm_quality": None, "mllm_overall": None,
                            "mllm_error": str(getattr(answer, "error", "no answer"))})
            else:
                out.append({**value.scores(), "mllm_error": None})
        return out
