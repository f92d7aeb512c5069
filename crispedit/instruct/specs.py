"""Edit specifications: the answer schema an LLM fills, and the template writer that fills it offline.

A specification is what the instruct stage writes into a sample: the instruction (and its
inverse, on request), the captions before and after, the objects the edit changes and the
task category. The LLM backend asks for it with :func:`answer_model` as the JSON schema; the
template backend (and every LLM-backed recipe under ``--tiny``) writes the same fields from
the taxonomy's seed examples and the vocabulary's word lists, and validates them against
the same model, so a dry run exercises exactly the shapes a real build produces.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from crispedit.instruct.taxonomies import REGION_OPS, Category, Vocabulary

#: Words an instruction or caption must have at least this many characters of.
MIN_TEXT = 3
MAX_OBJECTS = 6


class SpecBase(BaseModel):
    """Checks every answer model shares. Validators (not schema keywords) keep the JSON schema
    within what strict structured-output servers accept."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("instruction", "target_caption", "source_caption", "inverse_instruction", mode="after", check_fields=False)
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(value.split())
        if len(value) < MIN_TEXT:
            raise ValueError(f"write at least {MIN_TEXT} characters")
        return value

    @field_validator("edit_objects", mode="after", check_fields=False)
    @classmethod
    def _objects(cls, value: list[str]) -> list[str]:
        cleaned: list[str] = []
        for item in value:
            word = " ".join(item.split()).strip(" .,;").lower()
            if word and word not in cleaned:
                cleaned.append(word)
        if len(cleaned) > MAX_OBJECTS:
            raise ValueError(f"list at most {MAX_OBJECTS} objects")
        return cleaned


class RegionSpecBase(SpecBase):
    @field_validator("edit_objects", mode="after", check_fields=False)
    @classmethod
    def _named(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("this category edits named objects: list them (nouns only), at least one")
        return value


@functools.cache
def answer_model(task: str, region: bool, with_source: bool, with_inverse: bool) -> type[BaseModel]:
    """The pydantic model of one answer: the fields the mode needs, ``task`` fixed to the category.

    Every field is required (``strict`` JSON-schema servers need that); the category is a
    constant, so an answer for another category is invalid and asked again.
    """
    fields: dict[str, Any] = {}
    if with_source:
        fields["source_caption"] = (str, Field(description="the input image: a short, concrete description"))
    fields["instruction"] = (str, Field(description="the edit, as one imperative sentence a person would type"))
    fields["target_caption"] = (str, Field(description="the image after the edit, changing only what the instruction changes"))
    fields["edit_objects"] = (
        list[str],
        Field(description="nouns of the objects the edit changes or adds (what to locate in the image); empty for whole-image edits"),
    )
    if with_inverse:
        fields["inverse_instruction"] = (str, Field(description="the instruction that turns the edited image back into the input"))
    fields["task"] = (Literal[task], Field(description="the edit's category"))  # type: ignore[valid-type]
    name = re.sub(r"[^A-Za-z0-9]", "_", f"EditSpec_{task}")
    return create_model(name, __base__=RegionSpecBase if region else SpecBase, **fields)


# --- the template writer --------------------------------------------------------------------


class NoObject(ValueError):
    """The caption names no object from the vocabulary, so an object edit has nothing to edit."""


def template_spec(
    task: str,
    category: Category,
    rng: random.Random,
    vocabulary: Vocabulary,
    caption: str | None,
    topic: str | None = None,
) -> dict[str, Any]:
    """One specification for ``category``, as a dict with every answer field (inverse included).

    With no ``caption`` one is invented (around ``topic`` when given) that holds an object to
    edit. Raises :class:`NoObject` when an object edit finds no known object in ``caption``.
    """
    invented = caption is None
    if caption is None:
        obj = rng.choice(sorted(vocabulary.objects))
        scene = rng.choice(vocabulary.scenes)
        caption = f"a photo of {topic} with {_article(obj)} {obj}" if topic else f"a photo of {_article(obj)} {obj} {scene}"
    op = category.template
    spec: dict[str, Any]
    if op == "example":
        example = rng.choice(category.examples)
        spec = {
            "source_caption": example.source_caption if invented else caption,
            "instruction": example.instruction,
            "target_caption": example.target_caption,
            "edit_objects": list(example.edit_objects),
            "inverse_instruction": example.inverse_instruction or f"undo this edit: {example.instruction}",
        }
    elif op == "add":
        new, place = rng.choice(vocabulary.new_objects), rng.choice(vocabulary.places)
        verb = rng.choice(["add", "put", "place"])
        spec = _spec(caption, f"{verb} {_article(new)} {new} {place}", f"{caption}, with {_article(new)} {new} {place}", [new], f"remove the {new}")
    elif op in ("remove", "replace", "recolour", "retexture"):
        word = _find_object(caption, vocabulary, rng)
        if op == "remove":
            how = rng.choice(["remove the {w}", "take away the {w}", "erase the {w}"])
            spec = _spec(caption, how.format(w=word), _without(caption, word), [word], f"put the {word} back")
        elif op == "replace":
            new = rng.choice([n for n in vocabulary.new_objects if n != word])
            how = rng.choice(["replace the {w} with {a} {n}", "swap the {w} for {a} {n}", "turn the {w} into {a} {n}"])
            target = _substitute(caption, word, new)
            spec = _spec(caption, how.format(w=word, a=_article(new), n=new), target, [word, new], f"replace the {new} with {_article(word)} {word}")
        elif op == "recolour":
            colour = rng.choice(vocabulary.colours)
            how = rng.choice(["make the {w} {c}", "change the colour of the {w} to {c}", "paint the {w} {c}"])
            target = _substitute(caption, word, f"{colour} {word}")
            spec = _spec(caption, how.format(w=word, c=colour), target, [word], f"change the {word} back to its original colour")
        else:
            material = rng.choice(vocabulary.materials)
            how = rng.choice(["make the {w} out of {m}", "turn the {w} into {m}"])
            target = _substitute(caption, word, f"{word} made of {material}")
            spec = _spec(caption, how.format(w=word, m=material), target, [word], f"make the {word} out of its original material")
    elif op == "background":
        background = rng.choice(vocabulary.backgrounds)
        how = rng.choice(["change the background to {b}", "replace the background with {b}"])
        spec = _spec(caption, how.format(b=background), f"{caption}, in front of {background}", ["background"], "restore the original background")
    else:  # style
        style = rng.choice(vocabulary.styles)
        how = rng.choice(["turn the image into {a} {s}", "make it look like {a} {s}", "render this as {a} {s}"])
        subject = re.sub(r"^(a|an)\s+(close-up\s+)?(photo|picture|photograph|image)\s+of\s+", "", caption, flags=re.IGNORECASE)
        target = f"{_article(style)} {style} of {subject}"
        spec = _spec(caption, how.format(a=_article(style), s=style), target, [], "make it look like a photograph again")
    spec["task"] = task
    return spec


def needs_object(category: Category) -> bool:
    """Whether the template writer must find an object in the caption for this category."""
    return category.template in REGION_OPS and category.template != "add"


def _spec(caption: str, instruction: str, target: str, objects: list[str], inverse: str) -> dict[str, Any]:
    return {
        "source_caption": caption,
        "instruction": instruction,
        "target_caption": target,
        "edit_objects": objects,
        "inverse_instruction": inverse,
    }


def _find_object(caption: str, vocabulary: Vocabulary, rng: random.Random) -> str:
    """A vocabulary object named in the caption, as the caption writes it (e.g. 'cups')."""
    found: list[str] = []
    for words in vocabulary.objects.values():
        for word in words:
            match = re.search(rf"\b{re.escape(word)}(s|es)?\b", caption, flags=re.IGNORECASE)
            if match:
                found.append(match.group(0).lower())
                break
    if not found:
        raise NoObject(f"no object from the vocabulary in the caption {caption[:80]!r}")
    return rng.choice(sorted(set(found)))


_PREPOSITION = r"(?:on|in|at|by|under|near|next to|in front of)"


def _without(caption: str, word: str) -> str:
    """The caption with ``word`` gone, for a removal's target (an image generator reads it).

    Handles "..., with a spoon" / "... and a spoon" and the "a photo of a dog on a table"
    captions the writer invents ("a photo of a table"); otherwise says the object is gone.
    """
    w = re.escape(word)
    trailing = re.compile(rf"\s*(?:,\s*|\s+with\s+|\s+and\s+)(?:(?:a|an|the|some|two|three)\s+)?{w}\b", re.IGNORECASE)
    if trailing.search(caption):
        return trailing.sub("", caption, count=1)
    framed = re.match(rf"^(.*?\bof\s+)(?:a|an|the)\s+{w}\s+{_PREPOSITION}\s+(.+)$", caption, flags=re.IGNORECASE)
    if framed:
        return framed.group(1) + framed.group(2)
    return f"{caption}, with no {word} in it"


def _substitute(caption: str, word: str, replacement: str) -> str:
    """The caption with its first ``word`` replaced, fixing the article before it."""
    pattern = re.compile(rf"\b(?:(a|an)\s+)?{re.escape(word)}\b", flags=re.IGNORECASE)
    match = pattern.search(caption)
    if match is None:
        return f"{caption}, with {_article(replacement)} {replacement}"
    article = f"{_article(replacement)} " if match.group(1) else ""
    return caption[: match.start()] + article + replacement + caption[match.end() :]


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"
