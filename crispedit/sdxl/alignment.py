"""Which token of the target prompt takes its cross-attention from which token of the source prompt.

Prompt-to-Prompt (Hertz et al., 2022) edits the target's cross-attention with the source's:

* **replace** - the prompts tokenize to the same number of tokens, so they align token for
  token ("a cat on a sofa" -> "a dog on a sofa"): every target token takes the source map at
  its own position, the swapped word included (the new word is drawn where the old one was);
* **refine** - otherwise ("a cat" -> "a fluffy cat on a sofa"): a global alignment of the two
  token sequences (Needleman-Wunsch; match +1, mismatch -1, gap 0 as in P2P) maps each target
  token to its source token, and inserted tokens (no source token) keep their own attention.
  :func:`global_alignment` is the one alignment of the project; DiT4Edit's refinement calls it
  too, with its own rule for mismatches.

SDXL has two text encoders whose hidden states are concatenated along the feature axis, so
both share ONE token axis: the mapping must be the same for both tokenizers (they share a BPE
and differ in the pad token). :func:`sdxl_mapping` computes it for each and checks that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

MATCH, MISMATCH, GAP = 1, -1, 0


class AlignmentError(ValueError):
    """The two SDXL tokenizers disagree on how the prompts align (a custom tokenizer pair)."""


@dataclass(frozen=True)
class TokenMapping:
    """For each target position, the source position whose attention it takes (-1: its own)."""

    mode: Literal["replace", "refine"]
    mapper: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.mapper)

    def value_matrix(self) -> np.ndarray:
        """S (source x target): S[j, k] = 1 when target token k takes source token j's attention.

        With P_s the source's attention, the edited target attention applied to the target's
        values V_t is P_s[:, mapper] V_t = P_s (S V_t): the source's queries and keys with
        values S V_t, which fused attention computes without materialising P_s.
        """
        s = np.zeros((self.length, self.length), np.float32)
        for k, j in enumerate(self.mapper):
            if j >= 0:
                s[j, k] = 1.0
        return s

    def own_weights(self) -> np.ndarray:
        """1 for target tokens that keep their own attention (inserted words), else 0."""
        return np.array([1.0 if j < 0 else 0.0 for j in self.mapper], np.float32)

    @property
    def is_identity(self) -> bool:
        return all(j == k for k, j in enumerate(self.mapper))


def token_ids(tokenizer: Any, prompt: str) -> tuple[list[int], int]:
    """The padded ids SDXL's ``encode_prompt`` feeds the encoder, and the count of real tokens (BOS..EOS)."""
    length = tokenizer.model_max_length
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True)["input_ids"]
    eos = tokenizer.eos_token_id
    used = ids.index(eos, 1) + 1 if eos in ids[1:] else length
    return list(ids), used


def global_alignment(source: Sequence[int], target: Sequence[int], mismatch: Literal["map", "own"] = "map") -> list[int]:
    """Needleman-Wunsch over token ids; for each target token its aligned source index or -1.

    P2P's scores: match +1, mismatch -1, gap 0. The traceback prefers the diagonal, then a
    target insertion. ``mismatch`` says what a diagonal step between two different tokens
    does: ``map`` takes it and maps the target token to the source token (SDXL's P2P here);
    ``own`` never takes it, so only equal tokens map and every other target token keeps its
    own attention (DiT4Edit's refinement). With P2P's scores the two give the same mapping (gap
    0 > mismatch -1, so a diagonal mismatch never scores best: a substitution is a deletion
    plus an insertion); the option keeps each caller's rule explicit for when the scores change.
    """
    n, m = len(source), len(target)
    score = np.zeros((n + 1, m + 1), np.int64)
    score[:, 0] = GAP * np.arange(n + 1)
    score[0, :] = GAP * np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diagonal = score[i - 1, j - 1] + (MATCH if source[i - 1] == target[j - 1] else MISMATCH)
            score[i, j] = max(diagonal, score[i, j - 1] + GAP, score[i - 1, j] + GAP)
    mapper = [-1] * m
    i, j = n, m
    while i > 0 and j > 0:
        equal = source[i - 1] == target[j - 1]
        diagonal = score[i - 1, j - 1] + (MATCH if equal else MISMATCH)
        if score[i, j] == diagonal and (equal or mismatch == "map"):
            mapper[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif score[i, j] == score[i, j - 1] + GAP:
            j -= 1  # target token inserted
        else:
            i -= 1  # source token deleted
    return mapper


def prompt_mapping(tokenizer: Any, source: str, target: str) -> TokenMapping:
    """The mapping over the tokenizer's full padded length (77 for SDXL)."""
    source_ids, source_used = token_ids(tokenizer, source)
    target_ids, target_used = token_ids(tokenizer, target)
    length = len(target_ids)
    if source_used == target_used:
        return TokenMapping("replace", tuple(range(length)))
    content = global_alignment(source_ids[:source_used], target_ids[:target_used])
    # padding after the EOS maps to the source's padding, position by position
    padding = [source_used + k if source_used + k < length else -1 for k in range(length - target_used)]
    return TokenMapping("refine", tuple(content + padding))


def sdxl_mapping(tokenizer: Any, tokenizer_2: Any, source: str, target: str) -> TokenMapping:
    """The mapping on SDXL's shared token axis; both tokenizers must agree on it."""
    first = prompt_mapping(tokenizer, source, target)
    second = prompt_mapping(tokenizer_2, source, target)
    if first != second:
        raise AlignmentError(f"SDXL's tokenizers align {source!r} -> {target!r} differently ({first.mode} vs {second.mode})")
    return first
