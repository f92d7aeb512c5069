"""The chat messages the instruct stage sends: one category, its definition and seed examples, one item.

The prompt follows what the anchors did, in one request per item: InstructPix2Pix and
EditWorld had the LLM invent the input caption, the instruction, the output caption and the
edited objects from a handful of human-written examples; Emu Edit asked from a caption for
an instruction, the objects to change and the output caption; ImgEdit and AnyEdit show the
model the image itself. Here the category's definition and its seed examples (drawn with
the item's seed) go in the system message; the item (nothing, a caption, a topic or an
image) in the user message. Every answer field is listed so text-only servers, which never
see the JSON schema, know the keys too.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from crispedit.instruct.taxonomies import Category, SeedExample

Mode = Literal["scratch", "caption", "image"]


def build_messages(
    task: str,
    category: Category,
    examples: list[SeedExample],
    *,
    mode: Mode,
    with_source: bool,
    with_inverse: bool,
    caption: str | None = None,
    topic: str | None = None,
    hint: str | None = None,
    image_url: str | None = None,
) -> list[dict[str, Any]]:
    """System and user messages asking for one ``task`` edit (see the module docstring)."""
    keys = (["source_caption"] if with_source else []) + ["instruction", "target_caption", "edit_objects"]
    keys += (["inverse_instruction"] if with_inverse else []) + ["task"]
    rules = [
        f'Category "{task}": {category.definition}',
        "",
        "Rules:",
        "- instruction: one imperative sentence a person would type into an image editor; say what to change, not how.",
        "- target_caption: the image after the edit, in the style of the input caption, changing only what the instruction changes.",
        (
            "- edit_objects: the nouns of the objects the edit changes or adds, as a detector would look for them; at least one."
            if category.region
            else "- edit_objects: the nouns of the objects the edit changes; [] when it changes the whole image."
        ),
    ]
    if with_source:
        rules.append("- source_caption: a short, concrete description of the input image that a text-to-image model can draw.")
    if with_inverse:
        rules.append("- inverse_instruction: the instruction that turns the edited image back into the input image.")
    rules.append(f'- task: "{task}".')
    rules.append(f"Answer with one JSON object with the keys {', '.join(keys)}, and nothing else.")
    system = "You write training data for an instruction-based image editing model. Propose one edit.\n\n" + "\n".join(rules)
    if examples:
        shown = "\n\n".join(_example(e, task, with_source, with_inverse) for e in examples)
        system += f"\n\nExamples of {task} edits:\n\n{shown}"
    return [{"role": "system", "content": system}, {"role": "user", "content": _user(task, mode, with_source, caption, topic, hint, image_url)}]


def _example(example: SeedExample, task: str, with_source: bool, with_inverse: bool) -> str:
    answer: dict[str, Any] = {}
    if with_source:
        answer["source_caption"] = example.source_caption
    answer.update(instruction=example.instruction, target_caption=example.target_caption, edit_objects=example.edit_objects)
    if with_inverse:
        answer["inverse_instruction"] = example.inverse_instruction or ""
    answer["task"] = task
    lead = "" if with_source else f"Input image: {example.source_caption}\n"
    return f"{lead}Answer: {json.dumps(answer)}"


def _user(
    task: str, mode: Mode, with_source: bool, caption: str | None, topic: str | None, hint: str | None, image_url: str | None
) -> str | list[dict[str, Any]]:
    if mode == "image":
        text = f"Propose one {task} edit for this image; it must apply to what is visible."
        if caption:
            text += f" Its caption: {caption}"
        if with_source:
            text += " Describe the image in source_caption."
        assert image_url is not None
        return [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}]
    if caption is not None:
        return f"Input image: {caption}\nPropose one {task} edit for this image."
    subject = f"The image shows {topic}." if topic else f"For variety, build the image around {hint}." if hint else ""
    return f"Invent a new input image and one {task} edit for it. {subject}".strip()
