"""What ``inverse`` and ``compose`` share: a template or an LLM writes the derived pair's instruction.

The LLM goes through the shared client (:class:`crispedit.models.llm_stage.LLMStage`): answers are
validated, retried, cached in the build's cache and counted; ``backend: template`` and
``--tiny`` answer offline. A server that stays down raises TransientError (the shard is built
again on a rerun); an answer that stays invalid is the derived row's own reject.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from crispedit.core.sample import Sample, derive_seed
from crispedit.core.stage import StageParams
from crispedit.models.llm import LLMSettings
from crispedit.models.llm_stage import LLMStage


class WordsParams(StageParams):
    backend: Literal["template", "openai"] = Field(
        "template", description="who writes the derived instruction: 'template' (offline, never invents) or 'openai' (any OpenAI-compatible endpoint)",
    )
    llm: LLMSettings | None = Field(None, description="openai backend: endpoint, model, key variable, limits and prices (see the instruct stage)")

    @model_validator(mode="after")
    def _llm_given(self) -> WordsParams:
        if self.backend == "openai" and self.llm is None:
            raise ValueError("backend openai needs an `llm:` block (base_url, model, api_key_env...)")
        return self


@dataclass
class Ask:
    """One question for the LLM about one derived row."""

    row: Sample
    messages: list[dict[str, Any]]
    schema: type[BaseModel]
    purpose: str


class WordsStage(LLMStage):
    """Mixin for a stage with :class:`WordsParams`: asks its questions in one batch, or says it cannot."""

    params: Any
    name: str
    context: Any

    @property
    def live(self) -> bool:
        """Whether an LLM is asked (not the template backend, not ``--tiny``)."""
        return not self.offline

    def writer(self) -> str:
        """Who wrote the words, for the derived record."""
        return f"llm:{self.params.llm.model}" if self.live else "template"

    def model_ids(self) -> dict[str, str]:
        return self.llm_model_ids()

    def ask(self, asks: Sequence[Ask]) -> list[Any]:
        """The validated answers, in order; a row whose answer stays invalid is rejected (its answer is None)."""
        from crispedit.models.llm import LLMRequest

        if not asks:
            return []
        assert self.client is not None and self.params.llm is not None
        requests = []
        for a in asks:
            seed = a.row.seed(a.purpose)
            if self.params.llm.seed is not None:
                seed = derive_seed(self.params.llm.seed, seed)
            requests.append(LLMRequest(messages=a.messages, schema=a.schema, seed=seed))
        answers = self.client.ask_many(requests)  # TransientError when the server stays unavailable
        out = []
        for a, answer in zip(asks, answers, strict=True):
            a.row.add_usage(self.name, **answer.usage)
            if answer.value is None:
                a.row.fail(self.name, answer.error or "llm-invalid: no answer")
            out.append(answer.value)
        return out
