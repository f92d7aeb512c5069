"""The ``inverse`` stage: every pair also run backwards, as a new row beside it (HQ-Edit, NHR-Edit).

For each live pair the stage returns the pair, then its inverse (child 0): source and target
swapped, the instruction that undoes the edit (the pair's own ``inverse_instruction``, a
classical edit's undo, or an LLM's answer), the pair's instruction as the inverse's
``inverse_instruction``, and ``provenance.derived`` saying it is an inverse of which row and
that its source is a generated image. Its scores are empty: the filters after this stage
judge it again, as they judge every pair. A pair with no inverse instruction to be had gets
an inverse that is a reject with the reason, so nothing is dropped unseen.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from crispedit.core.sample import Sample
from crispedit.core.stage import Resources, Stage, register_stage
from crispedit.derived.pairs import derived_kind, inverse_of
from crispedit.derived.stages.words import Ask, WordsParams, WordsStage
from crispedit.derived.wording import InverseAnswer, inverse_messages, template_inverse
from crispedit.models.llm_stage import image_url


class InverseParams(WordsParams):
    rewrite: bool = Field(False, description="openai backend: ask even when the pair carries an inverse_instruction (else it is used as is)")
    show_images: bool = Field(False, description="openai backend: send both images too (needs a vision model)")
    max_side: int = Field(512, ge=32, description="show_images: images are scaled down to this longest side before they are sent")
    invert_inverses: bool = Field(False, description="also invert rows that are inverses already (that gives the forward pair back: a check, rarely wanted)")


@register_stage
class InverseStage(WordsStage, Stage[InverseParams]):
    """Each pair, then its inverse: target -> source with the instruction that undoes the edit."""

    kind = "inverse"
    resources = Resources(num_cpus=1)
    default_batch_size = 64
    cites: ClassVar[tuple[str, ...]] = (
        "HQ-Edit (Hui et al. 2024) and NHR-Edit (Kuprashevich et al. 2025): inverse edits as extra pairs",
    )

    def inputs(self) -> set[str]:
        return {"source_image", "target_image", "instruction"}

    def outputs(self) -> set[str]:
        return {"inverse_instruction"}

    def _wanted(self, pair: Sample) -> bool:
        if pair.source_image is None or pair.target_image is None:
            return False
        return self.params.invert_inverses or derived_kind(pair) != "inverse"

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        out: list[Sample] = []
        asks: list[Ask] = []
        for pair in batch:
            out.append(pair)
            if not self._wanted(pair):
                continue
            known = template_inverse(pair)
            if self.live and (self.params.rewrite or not pair.inverse_instruction):
                child = inverse_of(pair, None, self.writer())
                images = None
                if self.params.show_images:
                    images = (image_url(pair.target_image, self.params.max_side), image_url(pair.source_image, self.params.max_side))
                messages = inverse_messages(pair.instruction or "", pair.source_caption, pair.target_caption, images)
                asks.append(Ask(child, messages, InverseAnswer, "inverse-llm"))
            else:
                if not self.live:
                    self.warn_offline("inverse instructions come from the pairs and the templates")
                by = "pair" if pair.inverse_instruction else "classical edit" if known else "none"
                child = inverse_of(pair, known, by)
                if known is None:
                    child.fail(self.name, "no inverse instruction: the pair has none and its edit has no template undo "
                               "(use backend: openai, or an instruct stage with inverse: true)")
                pair.inverse_instruction = known  # the forward pair learns its inverse too
            out.append(child)
        for a, answer in zip(asks, self.ask(asks), strict=True):
            if answer is not None:
                a.row.instruction = answer.inverse_instruction
        for i, row in enumerate(out):  # the forward pair keeps what the LLM said undoes it
            if i + 1 < len(out) and out[i + 1].parent_id == row.id and row.inverse_instruction is None:
                row.inverse_instruction = out[i + 1].instruction
        return out
