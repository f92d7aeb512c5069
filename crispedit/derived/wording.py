"""The words of a derived pair: an inverse instruction, a compound instruction, from a template or an LLM.

Templates never invent an edit they cannot vouch for: an inverse comes from the pair's own
``inverse_instruction`` (the instruct stage writes one for every template edit, and an LLM
writes one on request) or from the classical edit that made the pair (each knows its
undo); a compound instruction joins the steps in order ("Make it brighter, then convert it
to black and white"). When neither applies the pair gets no words, and the stage rejects
the derived row with a reason instead of writing something false.

The LLM prompts ask for one field each, with the answer validated like every other LLM
answer (:mod:`crispedit.models.llm`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crispedit.classical.edits import EDITS
from crispedit.core.sample import Sample


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InverseAnswer(_Answer):
    inverse_instruction: str = Field(min_length=3, description="the instruction that turns the edited image back into the input image")

    @field_validator("inverse_instruction")
    @classmethod
    def _clean(cls, text: str) -> str:
        return " ".join(text.split())


class CompoundAnswer(_Answer):
    instruction: str = Field(min_length=3, description="one instruction that makes every listed edit, in order")

    @field_validator("instruction")
    @classmethod
    def _clean(cls, text: str) -> str:
        return " ".join(text.split())


def template_inverse(pair: Sample) -> str | None:
    """The inverse instruction a pair already carries, or its classical edit's undo; None when neither exists."""
    if pair.inverse_instruction:
        return pair.inverse_instruction
    made = pair.provenance.get("generate")
    if isinstance(made, dict) and made.get("backend") == "classical" and made.get("edit") in EDITS:
        return EDITS[made["edit"]].inverse(made.get("params") or {})
    return None


def _lead_lower(text: str) -> str:
    """'Make it brighter.' -> 'make it brighter' (a clause inside a sentence); acronyms ('CD', 'TV') stay."""
    text = text.strip().rstrip(".!")
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def compound(instructions: list[str]) -> str:
    """The steps as one instruction, in order: "A, then b, then c"."""
    if not instructions:
        raise ValueError("no instructions to join")
    first = instructions[0].strip().rstrip(".!")
    return ", then ".join([first, *(_lead_lower(i) for i in instructions[1:])])


def inverse_messages(instruction: str, source_caption: str | None, target_caption: str | None,
                     images: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """Ask for the instruction that undoes ``instruction`` (``images``: data URLs of the edited image, then the input)."""
    system = (
        "You write training data for an instruction-based image editing model. An edit instruction turned an input "
        "image into an edited image. Write the inverse: one imperative sentence that turns the EDITED image back into "
        "the INPUT image. Name what to change, not how; do not mention 'undo' or the original instruction. "
        'Answer with one JSON object with the key inverse_instruction, and nothing else.'
    )
    lines = [f"Instruction that was applied: {instruction}"]
    if source_caption:
        lines.append(f"Input image: {source_caption}")
    if target_caption:
        lines.append(f"Edited image: {target_caption}")
    text = "\n".join(lines)
    if images is None:
        return [{"role": "system", "content": system}, {"role": "user", "content": text}]
    content = [{"type": "text", "text": text + "\nThe first image is the edited image, the second the input."},
               {"type": "image_url", "image_url": {"url": images[0]}}, {"type": "image_url", "image_url": {"url": images[1]}}]
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def compound_messages(instructions: list[str]) -> list[dict[str, Any]]:
    """Ask for one instruction that makes every step, in order, as a person would type it."""
    system = (
        "You write training data for an instruction-based image editing model. Several edits were applied to an "
        "image one after the other. Write ONE imperative instruction that asks for all of them at once, in that "
        "order, keeping every detail and adding nothing. Answer with one JSON object with the key instruction, and nothing else."
    )
    steps = "\n".join(f"{n}. {text}" for n, text in enumerate(instructions, start=1))
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Edits, in order:\n{steps}"}]
