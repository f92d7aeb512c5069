"""Instruction synthesis: an edit specification for every item, from templates or from an LLM.

Backends:

* ``template`` writes specifications offline. ``mode: global`` (the default) draws a global
  photo edit from the classical catalogue and says exactly what the ``classical`` generator
  will do (crispedit.classical.edits). ``mode: region`` adds, removes, replaces or recolours
  a named object, with ``edit_objects`` filled, from the vocabulary's word lists, so offline
  recipes exercise the region paths of later stages. ``scratch``/``caption``/``image`` write
  any taxonomy's categories offline: what ``--tiny`` uses in place of an LLM.
* ``openai`` asks any OpenAI-compatible endpoint (crispedit.models.llm) for a specification of a
  category drawn from a taxonomy: ``scratch`` (the LLM invents the input caption too, as
  InstructPix2Pix and EditWorld did), ``caption`` (from the source's caption) or ``image``
  (a vision model sees the source image, as in ImgEdit and AnyEdit).

Every random choice (category, few-shot examples, template words) is drawn with the item's
own seed, so the same recipe asks the same questions and a rerun is answered from the cache.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from crispedit.classical.edits import EDITS
from crispedit.core.sample import Sample, derive_seed
from crispedit.core.stage import Stage, StageParams, register_stage
from crispedit.instruct.specs import NoObject, answer_model, template_spec
from crispedit.instruct.taxonomies import REGION_OPS, Category, Vocabulary, load_taxonomy, load_vocabulary
from crispedit.models.llm import LLMSettings
from crispedit.models.llm_stage import LLMStage, image_url

log = logging.getLogger("crispedit")

Mode = Literal["global", "region", "scratch", "caption", "image"]
TEMPLATE_ONLY = ("global", "region")


class InstructParams(StageParams):
    backend: Literal["template", "openai"] = Field("template", description="'template': offline; 'openai': any OpenAI-compatible endpoint")
    mode: Mode | None = Field(
        None,
        description="global/region (template only), scratch, caption or image; default: global for template, caption for openai",
    )
    edits: list[str] | None = Field(None, description="global mode: names of the classical edits to draw from; all when unset")
    taxonomy: str = Field("crispedit2m", description="crispedit2m, editworld, emu_edit, or the path of your own taxonomy YAML")
    categories: dict[str, float] | None = Field(
        None, description="weight per category (unlisted ones are never drawn); all categories equally when unset"
    )
    few_shot: int = Field(2, ge=0, description="seed examples of the category shown per request, drawn with the item's seed")
    inverse: bool = Field(False, description="also ask for the inverse instruction (global mode always writes one)")
    vocabulary: str | None = Field(None, description="template backend: path of a word-list YAML; the built-in list when unset")
    max_image_side: int = Field(512, ge=64, description="image mode: the image is downscaled to this long side before it is sent")
    llm: LLMSettings | None = Field(None, description="openai backend: endpoint, model, key variable, limits and prices")

    @field_validator("edits")
    @classmethod
    def _known_edits(cls, edits: list[str] | None) -> list[str] | None:
        if edits is not None:
            unknown = [e for e in edits if e not in EDITS]
            if unknown:
                raise ValueError(f"unknown edits {unknown}; known: {sorted(EDITS)}")
            if not edits:
                raise ValueError("list at least one edit")
        return edits

    @field_validator("taxonomy")
    @classmethod
    def _loads(cls, name: str) -> str:
        load_taxonomy(name)  # a clear error now rather than on a worker
        return name

    @model_validator(mode="after")
    def _consistent(self) -> InstructParams:
        mode = self.resolved_mode
        if self.backend == "openai":
            if self.llm is None:
                raise ValueError("backend openai needs an `llm:` block (base_url, model, api_key_env...)")
            if mode in TEMPLATE_ONLY:
                raise ValueError(f"mode {mode!r} is template-only; the openai backend has modes scratch, caption and image")
        if self.edits is not None and mode != "global":
            raise ValueError("`edits` applies to mode global only")
        if mode != "global":
            self.weights()  # validates the category names and weights
        return self

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("global" if self.backend == "template" else "caption")

    def weights(self) -> dict[str, float]:
        """Category -> weight, in the taxonomy's order, only positive weights."""
        taxonomy = load_taxonomy(self.taxonomy)
        names = list(taxonomy.categories)
        if self.resolved_mode == "region":
            names = [n for n in names if taxonomy.categories[n].template in REGION_OPS]
            if not names:
                raise ValueError(f"taxonomy {taxonomy.name!r} has no object-edit categories for region mode")
        if self.categories is None:
            return dict.fromkeys(names, 1.0)
        unknown = sorted(set(self.categories) - set(names))
        if unknown:
            scope = "object-edit categories" if self.resolved_mode == "region" else "categories"
            raise ValueError(f"unknown categories {unknown} for taxonomy {taxonomy.name!r}; its {scope}: {', '.join(names)}")
        if any(w < 0 for w in self.categories.values()):
            raise ValueError("category weights must be >= 0")
        chosen = {n: float(self.categories[n]) for n in names if self.categories.get(n, 0) > 0}
        if not chosen:
            raise ValueError("give at least one category a positive weight")
        return chosen


@register_stage
class InstructStage(LLMStage, Stage[InstructParams]):
    kind = "instruct"
    default_batch_size = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._vocabulary: Vocabulary | None = None

    # -- declarations -------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.params.resolved_mode

    def inputs(self) -> set[str]:
        return {"caption": {"source_caption"}, "image": {"source_image"}}.get(self.mode, set())

    def outputs(self) -> set[str]:
        out = {"instruction", "task", "target_caption", "edit_objects"}
        if self.mode == "global":
            return out | {"inverse_instruction", "meta.edit"}
        if self.params.inverse:
            out.add("inverse_instruction")
        if self.mode in ("scratch", "region", "image"):
            out.add("source_caption")
        return out

    def model_ids(self) -> dict[str, str]:
        return self.llm_model_ids()

    # -- running --------------------------------------------------------------------------
    def __call__(self, batch: list[Sample]) -> list[Sample]:
        if self.mode == "global":
            self._global(batch)
        elif self.offline:
            self._template(batch)
        else:
            self._ask(batch)
        return batch

    def _global(self, batch: list[Sample]) -> None:
        """The classical catalogue: the edit and its words, for the classical generator."""
        names = self.params.edits or sorted(EDITS)
        seed = self.context.seed
        for sample in batch:
            image_index = sample.meta.get("image_index", sample.index)
            variant = sample.meta.get("variant", 0)
            # Different variants of one image get different edits until the catalogue runs out.
            order = random.Random(derive_seed(seed, "edit-order", image_index)).sample(names, len(names))
            edit = EDITS[order[variant % len(order)]]
            rng = random.Random(derive_seed(seed, "edit-params", sample.index))
            params = edit.sample_params(rng)
            sample.instruction = rng.choice(edit.phrasings(params))
            sample.inverse_instruction = edit.inverse(params)
            sample.task = edit.task
            sample.target_caption = f"{sample.source_caption}, {edit.caption(params)}" if sample.source_caption else edit.caption(params)
            sample.edit_objects = []
            sample.meta["edit"] = {"name": edit.name, "params": params}
            sample.provenance["instruct"] = {"backend": "template", "edit": edit.name, "params": params}

    def _template(self, batch: list[Sample]) -> None:
        """Offline specifications from the taxonomy and the vocabulary, validated like LLM answers."""
        self.warn_offline("the template backend answers (same taxonomy and schema)")
        taxonomy = load_taxonomy(self.params.taxonomy)
        vocabulary = self._words()
        weights = self.params.weights()
        backend = "template (tiny)" if self.params.backend == "openai" else "template"
        for sample in batch:
            if self._missing_input(sample):
                continue
            task = self._draw_category(sample, weights)
            rng = random.Random(sample.seed("instruct-template"))
            category = taxonomy.categories[task]
            caption = sample.source_caption
            try:
                spec = template_spec(task, category, rng, vocabulary, caption, sample.meta.get("topic"))
            except NoObject as problem:
                fallback = [n for n in weights if taxonomy.categories[n].template == "add"]
                if not fallback:
                    sample.fail(self.name, f"template-no-object: {problem}; give the vocabulary an object the captions name")
                    continue
                task = fallback[0]
                category = taxonomy.categories[task]
                spec = template_spec(task, category, rng, vocabulary, caption, sample.meta.get("topic"))
            with_source = self._asks_source(sample)
            model = answer_model(task, category.region, with_source, self.params.inverse)
            fields = {k: v for k, v in spec.items() if k in model.model_fields}
            try:
                answer = model.model_validate(fields)
            except ValidationError as error:
                sample.fail(self.name, f"template-invalid: {error.errors()[0]['msg']} (category {task})")
                continue
            self._fill(sample, answer)
            sample.provenance["instruct"] = {
                "backend": backend,
                "mode": self.mode,
                "taxonomy": taxonomy.name,
                "category": task,
                "template": category.template,
            }

    def _ask(self, batch: list[Sample]) -> None:
        """One request per live item, all in flight together; answers (or rejects) in order."""
        from crispedit.instruct.prompts import build_messages
        from crispedit.models.llm import LLMRequest

        assert self.client is not None and self.params.llm is not None
        taxonomy = load_taxonomy(self.params.taxonomy)
        weights = self.params.weights()
        asked: list[tuple[Sample, str, list[int], int]] = []
        requests: list[LLMRequest] = []
        for sample in batch:
            if self._missing_input(sample):
                continue
            task = self._draw_category(sample, weights)
            category = taxonomy.categories[task]
            picks = self._few_shot(sample, category)
            with_source = self._asks_source(sample)
            hint = None
            if self.mode == "scratch" and sample.source_caption is None and sample.meta.get("topic") is None:
                hint = self._hint(sample)
            messages = build_messages(
                task,
                category,
                [category.examples[i] for i in picks],
                mode=self.mode,  # type: ignore[arg-type]
                with_source=with_source,
                with_inverse=self.params.inverse,
                caption=sample.source_caption,
                topic=sample.meta.get("topic"),
                hint=hint,
                image_url=image_url(sample.source_image, self.params.max_image_side) if self.mode == "image" else None,
            )
            seed = sample.seed("instruct-llm")
            if self.params.llm.seed is not None:
                seed = derive_seed(self.params.llm.seed, seed)
            requests.append(LLMRequest(messages=messages, schema=answer_model(task, category.region, with_source, self.params.inverse), seed=seed))
            asked.append((sample, task, picks, seed))
        answers = self.client.ask_many(requests)
        for (sample, task, picks, seed), answer in zip(asked, answers, strict=True):
            sample.add_usage(self.name, **answer.usage)
            if answer.value is None:
                sample.fail(self.name, answer.error or "llm-invalid: no answer")
                continue
            self._fill(sample, answer.value)
            sample.provenance["instruct"] = {
                "backend": "openai",
                "model": self.params.llm.model,
                "mode": self.mode,
                "taxonomy": taxonomy.name,
                "category": task,
                "few_shot": picks,
                "seed": seed,
                "temperature": self.params.llm.temperature,
            }

    # -- helpers --------------------------------------------------------------------------
    def _missing_input(self, sample: Sample) -> bool:
        if self.mode == "caption" and not sample.source_caption:
            sample.fail(self.name, "no-caption: caption mode needs a source caption (use a captions source or mode scratch)")
            return True
        if self.mode == "image" and sample.source_image is None:
            sample.fail(self.name, "no-image: image mode needs a source image")
            return True
        return False

    def _asks_source(self, sample: Sample) -> bool:
        """Whether the answer writes the input caption: when the item has none (scratch, region, image)."""
        return sample.source_caption is None and self.mode in ("scratch", "region", "image")

    def _draw_category(self, sample: Sample, weights: dict[str, float]) -> str:
        rng = random.Random(sample.seed("instruct-category"))
        return rng.choices(list(weights), weights=list(weights.values()))[0]

    def _few_shot(self, sample: Sample, category: Category) -> list[int]:
        count = min(self.params.few_shot, len(category.examples))
        rng = random.Random(sample.seed("instruct-few-shot"))
        return sorted(rng.sample(range(len(category.examples)), count))

    def _hint(self, sample: Sample) -> str:
        """A subject and setting drawn from the vocabulary, so items without a topic still differ."""
        words = self._words()
        rng = random.Random(sample.seed("instruct-hint"))
        thing = rng.choice(sorted(words.objects))
        return f"a {thing} {rng.choice(words.scenes)}"

    def _words(self) -> Vocabulary:
        if self._vocabulary is None:
            self._vocabulary = load_vocabulary(self.params.vocabulary)
        return self._vocabulary

    def _fill(self, sample: Sample, answer: Any) -> None:
        sample.instruction = answer.instruction
        sample.target_caption = answer.target_caption
        sample.edit_objects = list(answer.edit_objects)
        sample.task = answer.task
        if getattr(answer, "source_caption", None):
            sample.source_caption = answer.source_caption
        if self.params.inverse:
            sample.inverse_instruction = answer.inverse_instruction
