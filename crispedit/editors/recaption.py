"""The ``recaption`` stage: a vision model sees the finished pair and writes the instruction the pair shows.

An editor does not always do what it was told, so the instruction a re-edited or generated pair
ships with may describe another edit. GPT-Image-Edit-1.5M rewrote instructions from (input,
new output) where text and target disagreed; Pico-Banana-400K writes a long instruction and a
short one. Here one request per pair (both images, the original instruction) through the
shared LLM client asks for: what visibly changed, whether the original describes it
(``yes``/``partly``/``no``, kept as the score ``recaption_match`` 1/0.5/0), the instruction in a
long and a short form, and the same in each extra language. The original stays in
``instruction_original``; ``instruction`` becomes the new long (or short) form, always or only
where the original does not match (``policy``); ``instruction_short`` and
``instruction_translations`` (JSON) hold the rest. A pair the model calls unusable (not one
scene edited once, nothing visibly changed) is a reject on request. ``backend: template`` and
any backend under ``--tiny`` write the forms offline from the original instruction.
"""

from __future__ import annotations

import functools
import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from crispedit.core.sample import Sample
from crispedit.core.stage import Stage, StageParams, register_stage
from crispedit.models.llm import LLMSettings
from crispedit.models.llm_stage import LLMStage, image_url

LANGUAGE_NAMES = {"zh": "Simplified Chinese", "en": "English", "de": "German", "fr": "French", "ja": "Japanese", "es": "Spanish",
                  "ko": "Korean", "it": "Italian", "pt": "Portuguese", "ru": "Russian"}
MATCH_SCORES = {"yes": 1.0, "partly": 0.5, "no": 0.0}
SHORT_WORDS = 12

RULES = (
    "BEFORE is the source image and AFTER the edited result. First list what visibly differs between them. Then judge the "
    "ORIGINAL instruction against those differences. Then write the instruction a person would give an image editor to turn "
    "BEFORE into AFTER: imperative, about what changed only, never about the images, the editor or the original instruction. "
    "Set usable to false when they do not show one scene edited once, or nothing visibly changed."
)


@functools.cache
def recaption_answer(languages: tuple[str, ...] = ()) -> type[BaseModel]:
    """The answer: what changed (grounding first), a verdict on the original, long and short forms, a pair per extra language.

    Every field is required and extra keys are forbidden, so the schema is sent strict (OpenAI's
    structured outputs); the languages are fields, not a mapping, for the same reason.
    """
    fields: dict[str, Any] = {
        "usable": (bool, Field(description="false when the images do not show one scene edited once, or show no visible edit")),
        "changes": (list[str], Field(min_length=1, max_length=5, description="each visible difference from BEFORE to AFTER, most important first")),
        "original_matches": (Literal["yes", "partly", "no"], Field(
            description="does the ORIGINAL instruction describe what the pair shows (yes), only part of it or with wrong details (partly), or not (no)")),
        "instruction_long": (str, Field(min_length=3, max_length=600, description=(
            "one imperative instruction that turns BEFORE into AFTER, naming the object, its attributes and where it is; only what visibly changed"))),
        "instruction_short": (str, Field(min_length=3, max_length=120, description=f"the same edit in at most {SHORT_WORDS} words")),
        "edit_objects": (list[str], Field(max_length=8, description="the objects the edit changes")),
    }
    for lang in languages:
        name = LANGUAGE_NAMES.get(lang, lang)
        fields[f"instruction_long_{lang}"] = (str, Field(min_length=1, max_length=600, description=f"instruction_long in {name}"))
        fields[f"instruction_short_{lang}"] = (str, Field(min_length=1, max_length=120, description=f"instruction_short in {name}"))
    return create_model("RecaptionAnswer", __config__=ConfigDict(extra="forbid"), **fields)  # type: ignore[call-overload, no-any-return]


def recaption_messages(before: str, after: str, original: str, languages: tuple[str, ...]) -> list[dict[str, Any]]:
    """The request: the rules, the original instruction, then BEFORE and AFTER as data URLs."""
    extra = "".join(f" Also give both forms in {LANGUAGE_NAMES.get(lang, lang)}." for lang in languages)
    content = [
        {"type": "text", "text": f"{RULES}{extra}\nORIGINAL instruction: {original!r}"},
        {"type": "text", "text": "BEFORE:"},
        {"type": "image_url", "image_url": {"url": before}},
        {"type": "text", "text": "AFTER:"},
        {"type": "image_url", "image_url": {"url": after}},
    ]
    return [{"role": "system", "content": "You write image-editing instructions from before/after pairs. Answer with one JSON object."},
            {"role": "user", "content": content}]


def template_answer(original: str, objects: list[str], languages: tuple[str, ...]) -> BaseModel:
    """The offline answer: the original instruction kept (it is all a template knows), its first words as the short form.

    Other languages are marked as untranslated (``[zh] make it red``): a template cannot translate,
    and the marker keeps an offline build from passing for a translated one.
    """
    text = " ".join(original.split()) or "edit the image"
    short = " ".join(text.split()[:SHORT_WORDS])
    fields: dict[str, Any] = {
        "usable": True, "changes": [text[:200]], "original_matches": "yes", "instruction_long": text[:600],
        "instruction_short": short[:120], "edit_objects": list(objects)[:8],
    }
    for lang in languages:
        fields[f"instruction_long_{lang}"] = f"[{lang}] {text}"[:600]
        fields[f"instruction_short_{lang}"] = f"[{lang}] {short}"[:120]
    return recaption_answer(languages).model_validate(fields)


class RecaptionParams(StageParams):
    backend: Literal["template", "openai"] = Field("openai", description="'openai': any OpenAI-compatible vision model; 'template': offline")
    llm: LLMSettings | None = Field(None, description="openai backend: endpoint, model (a vision model), key variable, limits and prices")
    policy: Literal["always", "mismatch"] = Field(
        "always", description="replace the instruction always, or only where the model says the original does not match the pair (partly/no)",
    )
    primary: Literal["long", "short"] = Field("long", description="which form becomes `instruction`; the short one is `instruction_short` either way")
    languages: list[str] = Field(default_factory=list, description="extra languages (ISO 639-1: zh, de, ...) for instruction_translations")
    reject_unusable: bool = Field(True, description="reject a pair the model calls unusable (not one scene edited once, or no visible edit)")
    max_side: int = Field(512, ge=64, description="images are scaled down to this longest side before they are sent")
    cache: bool = Field(True, description="keep answers in the build's cache, so a rerun asks nothing twice")

    @field_validator("languages")
    @classmethod
    def _codes(cls, value: list[str]) -> list[str]:
        for code in value:
            if not (2 <= len(code) <= 8 and code.replace("-", "").isalnum() and code.islower()):
                raise ValueError(f"a language is a lowercase code such as zh, de or pt-br, not {code!r}")
        if len(set(value)) != len(value):
            raise ValueError("a language is listed twice")
        return value

    @model_validator(mode="after")
    def _llm_for_openai(self) -> RecaptionParams:
        if self.backend == "openai" and self.llm is None:
            raise ValueError("backend openai needs an `llm:` block (base_url, model, api_key_env...)")
        return self


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


@register_stage
class RecaptionStage(LLMStage, Stage[RecaptionParams]):
    """The instruction rewritten from the finished pair, the original kept beside it."""

    kind = "recaption"
    default_batch_size = 32
    cites: ClassVar[tuple[str, ...]] = (
        "GPT-Image-Edit-1.5M (Wang et al. 2025): instructions rewritten from the input and the new output where they disagree",
        "Pico-Banana-400K (Qian et al. 2025): a long and a short instruction per pair",
    )

    def inputs(self) -> set[str]:
        return {"source_image", "target_image", "instruction"}

    def outputs(self) -> set[str]:
        out = {"instruction", "instruction_original", "instruction_short"}
        return out | {"instruction_translations"} if self.params.languages else out

    def score_columns(self) -> list[str]:
        return ["recaption_match"]

    def model_ids(self) -> dict[str, str]:
        return self.llm_model_ids("recaption")

    def llm_cache_dir(self) -> Any:
        return self.context.cache_dir if self.params.cache else None

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        languages = tuple(self.params.languages)
        todo = []
        for sample in batch:
            missing = next((n for n in ("source_image", "target_image", "instruction") if _absent(getattr(sample, n))), None)
            if missing is not None:
                sample.fail(self.name, f"missing input: no {missing}")
            else:
                todo.append(sample)
        if self.offline:
            self.warn_offline("the template keeps each original instruction")
            backend = "template (tiny)" if self.params.backend == "openai" else "template"
            for sample in todo:
                self._apply(sample, template_answer(sample.instruction or "", sample.edit_objects, languages), backend)
            return batch
        from crispedit.models.llm import LLMRequest

        assert self.params.llm is not None
        side = self.params.max_side
        requests = [
            LLMRequest(recaption_messages(image_url(s.source_image, side), image_url(s.target_image, side), s.instruction or "", languages),
                       recaption_answer(languages), seed=s.seed("recaption"))
            for s in todo
        ]
        for sample, answer in zip(todo, self.client.ask_many(requests), strict=True):  # TransientError when the server stays down
            sample.add_usage(self.name, **answer.usage)
            if answer.value is None:
                sample.scores["recaption_match"] = None
                sample.fail(self.name, answer.error or "llm-invalid: no answer")
            else:
                self._apply(sample, answer.value, self.params.llm.model)
        return batch

    def _apply(self, sample: Sample, answer: Any, backend: str) -> None:
        p = self.params
        sample.scores["recaption_match"] = MATCH_SCORES[answer.original_matches]
        sample.provenance[self.name] = {"backend": backend, "changes": list(answer.changes), "original_matches": answer.original_matches,
                                        "usable": answer.usable, "policy": p.policy}
        if p.reject_unusable and not answer.usable:
            sample.fail(self.name, f"recaption-unusable: the model sees no single visible edit ({'; '.join(answer.changes)[:200]})")
            return
        original = sample.instruction
        replace = p.policy == "always" or answer.original_matches != "yes"
        sample.instruction_original = original
        if replace:
            sample.instruction = answer.instruction_long if p.primary == "long" else answer.instruction_short
            if answer.edit_objects:
                sample.edit_objects = list(answer.edit_objects)
        sample.instruction_short = answer.instruction_short
        if p.languages:
            sample.instruction_translations = json.dumps(
                {lang: {"long": getattr(answer, f"instruction_long_{lang}"), "short": getattr(answer, f"instruction_short_{lang}")}
                 for lang in p.languages}, ensure_ascii=False, sort_keys=True)
        sample.provenance[self.name]["replaced"] = replace
