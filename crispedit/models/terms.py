"""Licences and output-use terms of the models a build runs, declared beside their specs.

A dataset made with a model's outputs inherits what the model's licence says about them: the
dataset card states the effective terms (every clause of every model the recipe names, with
who imposes it) and ``crispedit publish`` refuses a recipe ``license:`` that contradicts them
(a permissive licence over outputs of a non-commercial model) unless ``--force-license``.
The facts below were read from the model cards and licence texts at the pinned revisions.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Licence ids that grant commercial use: a dataset declared under one contradicts a non-commercial model.
COMMERCIAL_LICENSES = frozenset({
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-3.0", "unlicense",
    "odc-by", "odbl", "pddl", "cdla-permissive-2.0", "openrail", "openrail++", "creativeml-openrail-m",
})


@dataclass(frozen=True)
class Terms:
    """One model's licence and what it says about the model's use and its outputs."""

    license: str
    name: str
    non_commercial: bool = False  # the model may be run for non-commercial purposes only
    output_terms: tuple[str, ...] = ()  # clauses about the outputs, quoted in substance


FLUX_DEV_NC = Terms(
    "other", "FLUX.1 [dev] Non-Commercial License v1.1.1", non_commercial=True,
    output_terms=("outputs may not be used to train, fine-tune or distill a model that competes with FLUX.1 [dev] or FLUX.1 Kontext [dev] (§2(d))",
                  "a content filter must be used when the model is run (§2(e))"),
)
OPENAI_TERMS = Terms(
    "other", "OpenAI Terms of Use and usage policies",
    output_terms=("output may not be used to develop models that compete with OpenAI",),
)

#: By model id (no revision). Overridable by registering another Terms for the same id.
MODEL_TERMS: dict[str, Terms] = {
    "Qwen/Qwen-Image-Edit": Terms("apache-2.0", "Apache 2.0"),
    "Qwen/Qwen-Image-Edit-2509": Terms("apache-2.0", "Apache 2.0"),
    "black-forest-labs/FLUX.1-Kontext-dev": FLUX_DEV_NC,
    "timbrooks/instruct-pix2pix": Terms("mit", "MIT (Stable Diffusion 1.5's OpenRAIL-M use restrictions may apply)"),
}


def terms_for(model: str) -> Terms | None:
    """The terms of a model as a stage reports it (``id@revision``, ``tiny:id`` for a twin, ``name @ endpoint``)."""
    name = model.removeprefix("tiny:").split(" @ ")[0].partition("@")[0].strip()
    if name.startswith(("gpt-image", "dall-e")):
        return OPENAI_TERMS
    return MODEL_TERMS.get(name)


def applied_terms(models: list[str]) -> dict[str, Terms]:
    """Model -> its terms, for the models whose terms are known."""
    return {m: t for m in models if (t := terms_for(m)) is not None}


def license_conflicts(license_id: str, applied: dict[str, Terms]) -> list[str]:
    """Why ``license_id`` contradicts the terms that apply (empty when it does not)."""
    if license_id.lower() not in COMMERCIAL_LICENSES:
        return []
    return [f"{model} is under the {t.name}: non-commercial use only, so the data cannot be offered under {license_id}"
            for model, t in applied.items() if t.non_commercial]
