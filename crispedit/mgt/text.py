"""Text conditioning: CLIP pooled embedding + LLM hidden states, and keyword rows.

As in EditMGT: the CLIP text encoder contributes only its projected pooled output
(pooled_projections); the LLM (Gemma-2-2B-IT by default, any causal LM id) contributes
`hidden_states[llm_hidden_layer]`, padded to a fixed length with no attention mask
given to the transformer (the transformer was trained that way).

Keyword rows for region-hold are found with the LLM's own tokenizer, through character
offsets, because the text stream the attention rows belong to is the LLM's. Upstream
looked them up with the CLIP tokenizer, whose token positions do not match those rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass
class TextEmbeddings:
    hidden: torch.Tensor  # (B, T, joint_attention_dim)
    pooled: torch.Tensor  # (B, pooled_projection_dim)

    def index(self, mask: torch.Tensor, other: TextEmbeddings) -> TextEmbeddings:
        """Per-sample choice: `other` where mask is True (used for CFG dropout)."""
        m = mask.to(self.hidden.device)
        return TextEmbeddings(
            hidden=torch.where(m[:, None, None], other.hidden.expand_as(self.hidden), self.hidden),
            pooled=torch.where(m[:, None], other.pooled.expand_as(self.pooled), self.pooled),
        )

    @staticmethod
    def cat(parts: list[TextEmbeddings]) -> TextEmbeddings:
        return TextEmbeddings(torch.cat([p.hidden for p in parts]), torch.cat([p.pooled for p in parts]))


class TextConditioner:
    """Frozen CLIP + LLM encoders producing the transformer's text inputs."""

    def __init__(self, clip_tokenizer, clip_model, llm_tokenizer, llm_model, max_length: int, clip_max_length: int,
                 hidden_layer: int = -2) -> None:
        self.clip_tokenizer = clip_tokenizer
        self.clip_model = clip_model.eval().requires_grad_(False)
        self.llm_tokenizer = llm_tokenizer
        self.llm_model = llm_model.eval().requires_grad_(False)
        self.max_length = max_length
        self.clip_max_length = clip_max_length
        self.hidden_layer = hidden_layer
        self._empty: dict[str, TextEmbeddings] = {}

    def to(self, device: torch.device | str) -> TextConditioner:
        self.clip_model.to(device)
        self.llm_model.to(device)
        self._empty.clear()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.llm_model.parameters()).device

    def _llm_inputs(self, prompts: list[str]):
        return self.llm_tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt",
            return_offsets_mapping=True,
        )

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeddings:
        device = self.device
        clip_in = self.clip_tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.clip_max_length, return_tensors="pt"
        )
        pooled = self.clip_model(input_ids=clip_in.input_ids.to(device)).text_embeds
        llm_in = self._llm_inputs(prompts)
        out = self.llm_model(
            input_ids=llm_in.input_ids.to(device), attention_mask=llm_in.attention_mask.to(device),
            output_hidden_states=True,
        )
        hidden = out.hidden_states[self.hidden_layer]
        return TextEmbeddings(hidden=hidden.float(), pooled=pooled.float())

    def empty(self, prompt: str = "") -> TextEmbeddings:
        """Encoding of the negative/empty prompt (1, ...), cached: the unconditional input."""
        if prompt not in self._empty:
            self._empty[prompt] = self.encode([prompt])
        return self._empty[prompt]

    def keyword_rows(self, prompts: list[str], keywords: list[list[str]]) -> torch.Tensor | None:
        """(B, T) 0/1 weights of the LLM token rows covering each prompt's keywords.

        A prompt whose keywords are not found gets all its non-padding rows, so one missing
        keyword never yields an empty (NaN) map. Returns None if no keyword was given at all.
        """
        if not any(keywords):
            return None
        enc = self._llm_inputs(prompts)
        rows = torch.zeros(len(prompts), self.max_length)
        for b, (prompt, words) in enumerate(zip(prompts, keywords)):
            spans = [m.span() for w in words if w for m in re.finditer(re.escape(w), prompt, flags=re.IGNORECASE)]
            for t, (start, end) in enumerate(enc.offset_mapping[b].tolist()):
                if end > start and any(start < s_end and end > s_start for s_start, s_end in spans):
                    rows[b, t] = 1.0
            if rows[b].sum() == 0:
                rows[b] = enc.attention_mask[b].float()
        return rows
