"""Licences and output-use terms of the models a build runs and of the images it reads.

A dataset made with a model's outputs inherits what the model's licence says about them, and
a dataset of edited photos inherits the photos' licences: the dataset card states the
effective terms (every clause of every model the recipe names, with who imposes it, and the
source rows' licences counted, the strictest first) and ``crispedit publish`` refuses a recipe
``license:`` that contradicts them (a permissive licence over outputs of a non-commercial
model, or over non-commercial photos) unless ``--force-license``. The facts below were read
from the model cards and licence texts at the pinned revisions; a recipe's ``terms:`` declares
the terms of a model crispedit does not know, or overrides what it records (a commercial
licence bought), and the card says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    #: Who says so: ``crispedit`` (recorded here), or the recipe (``declared by the recipe``, ``overridden by the recipe``).
    origin: str = "crispedit"
    reason: str = ""  # the recipe's reason for its declaration
    recorded: Terms | None = None  # what crispedit records, where the recipe overrode it
    loosened: tuple[str, ...] = ()  # the recorded restrictions the override lifts


FLUX_DEV_NC = Terms(
    "other", "FLUX.1 [dev] Non-Commercial License v1.1.1", non_commercial=True,
    output_terms=("outputs may not be used to train, fine-tune or distill a model that competes with FLUX.1 [dev] or FLUX.1 Kontext [dev] (§2(d))",
                  "a content filter must be used when the model is run (§2(e))"),
)
OPENAI_TERMS = Terms(
    "other", "OpenAI Terms of Use and usage policies",
    output_terms=("output may not be used to develop models that compete with OpenAI",),
)

#: By model id (no revision). A recipe's ``terms:`` overrides an entry for its build (:func:`applied_terms`).
MODEL_TERMS: dict[str, Terms] = {
    "Qwen/Qwen-Image-Edit": Terms("apache-2.0", "Apache 2.0"),
    "Qwen/Qwen-Image-Edit-2509": Terms("apache-2.0", "Apache 2.0"),
    "black-forest-labs/FLUX.1-Kontext-dev": FLUX_DEV_NC,
    "timbrooks/instruct-pix2pix": Terms("mit", "MIT (Stable Diffusion 1.5's OpenRAIL-M use restrictions may apply)"),
}


def model_key(model: str) -> str:
    """The id terms are keyed by, from a model as a stage reports it (``id@revision``, ``tiny:id``, ``name @ endpoint``)."""
    return model.removeprefix("tiny:").split(" @ ")[0].partition("@")[0].strip()


def terms_for(model: str) -> Terms | None:
    """The terms crispedit records for a model as a stage reports it, or None when it records none."""
    name = model_key(model)
    if name.startswith(("gpt-image", "dall-e")):
        return OPENAI_TERMS
    return MODEL_TERMS.get(name)


class TermsDeclaration(BaseModel):
    """A recipe's word on one model's or endpoint's terms, keyed by its id (no revision; an endpoint's model name).

    For a model crispedit records nothing about it declares the terms; for a recorded one it
    overrides them (a commercial licence bought, a newer licence version). What it leaves out
    stays as recorded, so lifting a restriction takes an explicit ``non_commercial: false`` or
    ``output_use: []``, and a ``reason`` the card prints.
    """

    model_config = ConfigDict(extra="forbid")

    license: str | None = Field(None, description="the licence id (`apache-2.0`, `cc-by-nc-4.0`, `other`); default: as recorded, else `other`")
    name: str | None = Field(None, description="the licence as the card names it (default: as recorded, or the licence id when that changes)")
    non_commercial: bool | None = Field(
        None, description="the model may be used for non-commercial purposes only (default: as recorded, else read from the licence id)",
    )
    output_use: list[str] | None = Field(
        None, description="what the terms say about the outputs, one clause each (default: as recorded); `[]` lifts the recorded clauses",
    )
    reason: str | None = Field(
        None, description="why the recipe knows better (a licence bought, a contract); required where it lifts a recorded restriction; on the card",
    )

    @model_validator(mode="after")
    def _says_something(self) -> TermsDeclaration:
        if self.license is None and self.name is None and self.non_commercial is None and self.output_use is None:
            raise ValueError("a terms entry gives at least one of license, name, non_commercial, output_use")
        return self


class TermsError(ValueError):
    """A recipe's terms entry that cannot stand (it lifts a recorded restriction without saying why)."""


def declared_terms(key: str, declaration: TermsDeclaration, recorded: Terms | None) -> Terms:
    """The terms of model ``key`` once the recipe's declaration is applied over what crispedit records."""
    d = declaration
    license_id = d.license or (recorded.license if recorded else "other")
    if d.name:
        name = d.name
    elif recorded is not None and (d.license is None or d.license == recorded.license):
        name = recorded.name
    else:
        name = license_id
    if d.non_commercial is not None:
        non_commercial = d.non_commercial
    else:
        non_commercial = (recorded is not None and recorded.non_commercial) or "non-commercial" in license_restrictions(license_id)
    clauses = tuple(d.output_use) if d.output_use is not None else (recorded.output_terms if recorded else ())
    loosened: tuple[str, ...] = ()
    if recorded is not None:
        loosened = (("non-commercial use only",) if recorded.non_commercial and not non_commercial else ())
        loosened += tuple(c for c in recorded.output_terms if c not in clauses)
    reason = " ".join((d.reason or "").split())
    if loosened and not reason:
        raise TermsError(f"the recipe's terms for {key} lift what {recorded.name if recorded else key} says "
                         f"({'; '.join(loosened)}); give a `reason:` (it is printed on the dataset card)")
    return Terms(license_id, name, non_commercial, clauses,
                 origin="overridden by the recipe" if recorded is not None else "declared by the recipe",
                 reason=reason, recorded=recorded, loosened=loosened)


def check_declarations(declarations: Mapping[str, TermsDeclaration]) -> list[tuple[str, str]]:
    """(key, problem) for each declaration that cannot stand: what a recipe is refused for before it builds."""
    problems = []
    for key, declaration in declarations.items():
        if model_key(key) != key:
            problems.append((key, f"terms are keyed by a model id without revision or endpoint ({model_key(key)!r})"))
            continue
        try:
            declared_terms(key, declaration, terms_for(key))
        except TermsError as error:
            problems.append((key, str(error)))
    return problems


def applied_terms(models: list[str], declarations: Mapping[str, TermsDeclaration] | None = None) -> dict[str, Terms]:
    """Model -> its terms (the recipe's declaration over what crispedit records), for the models whose terms are known."""
    out: dict[str, Terms] = {}
    for model in models:
        recorded = terms_for(model)
        declaration = (declarations or {}).get(model_key(model))
        terms = declared_terms(model_key(model), declaration, recorded) if declaration is not None else recorded
        if terms is not None:
            out[model] = terms
    return out


# --- the licences of the source images -------------------------------------------------------

#: What a row whose source gives no licence says.
UNKNOWN = "unknown"

#: A restriction, how strict it counts (the strictest licence is listed first), and how a licence id spells it.
_RESTRICTIONS = (
    ("no derivatives", 4, re.compile(r"(^|[-_ ])nd([-_ .]|$)|no-?deriv", re.IGNORECASE)),
    ("non-commercial", 2, re.compile(r"(^|[-_ ])nc([-_ .]|$)|non-?commercial", re.IGNORECASE)),
    ("share-alike", 1, re.compile(r"(^|[-_ ])sa([-_ .]|$)|share-?alike|^odbl", re.IGNORECASE)),
)


def license_restrictions(license_id: str) -> tuple[str, ...]:
    """The restrictions a licence id names (Creative Commons' ``-nc``, ``-nd``, ``-sa`` and spelled-out forms)."""
    return tuple(name for name, _, pattern in _RESTRICTIONS if pattern.search(license_id))


def _strictness(license_id: str) -> int:
    return sum(weight for name, weight, _ in _RESTRICTIONS if name in license_restrictions(license_id))


@dataclass(frozen=True)
class SourceLicenses:
    """How many published rows carry each source licence (``unknown`` where the source gave the row none)."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def unknown(self) -> int:
        return self.counts.get(UNKNOWN, 0)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    def ranked(self) -> list[tuple[str, int, tuple[str, ...]]]:
        """(licence, rows, restrictions), strictest first, ``unknown`` left out."""
        known = [(lic, n, license_restrictions(lic)) for lic, n in self.counts.items() if lic != UNKNOWN]
        return sorted(known, key=lambda item: (-_strictness(item[0]), -item[1], item[0]))

    def strictest(self) -> str | None:
        ranked = self.ranked()
        return ranked[0][0] if ranked else None


def license_conflicts(license_id: str, applied: dict[str, Terms], sources: SourceLicenses | None = None) -> list[str]:
    """Why ``license_id`` contradicts the terms that apply (empty when it does not).

    Only a licence that grants commercial use and adaptation (:data:`COMMERCIAL_LICENSES`) can
    contradict: ``other`` or a non-commercial id promises nothing the terms forbid.
    """
    lowered = license_id.lower()
    if lowered not in COMMERCIAL_LICENSES:
        return []
    out = [f"{model} is under the {t.name}: non-commercial use only, so the data cannot be offered under {license_id}"
           for model, t in applied.items() if t.non_commercial]
    for lic, rows, restrictions in sources.ranked() if sources is not None else []:
        why = []
        if "non-commercial" in restrictions:
            why.append("non-commercial use only")
        if "no derivatives" in restrictions:
            why.append("no derivatives, and the edited targets are adaptations")
        if "share-alike" in restrictions and lic.lower() != lowered and not (lowered.startswith("cc-by-sa") and lic.lower().startswith("cc-by-sa")):
            why.append(f"adaptations are shared under {lic} itself")
        if why:
            out.append(f"{rows} source {'rows are' if rows != 1 else 'row is'} under {lic}: {', '.join(why)}, "
                       f"so the data cannot be offered under {license_id}")
    return out
