"""Which source tokens' cross-attention each target token takes: Prompt-to-Prompt's two mappings.

Prompt-to-Prompt (Hertz et al., 2022; google/prompt-to-prompt seq_aligner.py) edits the
target's cross-attention maps with the source's, through a matrix S (source x target
tokens): the target's map becomes ``P_s S`` on the columns S covers, and its own map
``P_t`` on the columns it keeps (weight ``own``):

* **replace** (word swap) - the prompts have as many words; each word maps onto the word at
  its place: token to token when both have as many tokens, else every source token gives
  ``1 / len(target word)`` to every target token of the word (P2P's rule, so "cat" -> "zebra"
  draws the zebra where the cat's one token attended);
* **refine** (words added or removed) - a global alignment of the token ids
  (Needleman-Wunsch, match +1, mismatch -1, gap 0, P2P's scores and tie-breaks) maps each
  target token to its equal source token; inserted tokens keep their own attention.

P2P leaves the choice to the user. Here it is decided per pair (issue 21): **replace when
the alignment is gap-free** - every unaligned stretch replaces source tokens by target
tokens, no pure insertion or deletion - **and the prompts have as many words** (P2P's replace
precondition); refine otherwise. Counting tokens is not enough: "a cat on a tree" -> "a red
cat on tree" has equal counts but an insertion and a deletion (refine), and "a cat" ->
"a zebra" differs in count but is a swap (replace).

Padding (target positions after its EOS) takes the source's column at the same position, as
P2P's refine does. After the last swapped word the released replace code maps by target
position too (``tail="released"``), which misreads every later word when the swapped words
differ in token count; ``tail="shifted"`` (the default mode's) keeps mapping word to word.

SDXL has two text encoders whose hidden states are concatenated along the feature axis, so
both share ONE token axis: the mapping must be the same for both tokenizers (they share a BPE
and differ in the pad token). :func:`sdxl_mapping` computes it for each and checks that.
:func:`global_alignment`, :func:`is_gap_free` and :func:`word_replacement` are the project's
one alignment; DiT4Edit's P2P on T5 tokens calls them too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

MATCH, MISMATCH, GAP = 1, -1, 0
Tail = Literal["shifted", "released"]


class AlignmentError(ValueError):
    """The two SDXL tokenizers disagree on how the prompts align (a custom tokenizer pair)."""


@dataclass(frozen=True)
class TokenMapping:
    """How a target's cross-attention is built from its source's: ``P_s S + P_t diag(own)``.

    ``entries`` are the non-zero (source token, target token, weight) of S; ``own`` is, per
    target token, the weight of the target's own map (1 for inserted tokens, else 0).
    """

    mode: Literal["replace", "refine"]
    entries: tuple[tuple[int, int, float], ...]
    own: tuple[float, ...]

    @property
    def length(self) -> int:
        return len(self.own)

    def value_matrix(self) -> np.ndarray:
        """S (source x target). With P_s the source's attention, ``P_s S V_t = P_s (S V_t)``: fused
        attention over the source's queries and keys with values ``S V_t``, no map materialised."""
        s = np.zeros((self.length, self.length), np.float32)
        for j, k, weight in self.entries:
            s[j, k] = weight
        return s

    def own_weights(self) -> np.ndarray:
        return np.array(self.own, np.float32)

    def sources_of(self, k: int) -> list[int]:
        """The source tokens target token k reads (for messages and tests)."""
        return [j for j, t, _ in self.entries if t == k]

    @property
    def is_identity(self) -> bool:
        return not any(self.own) and len(self.entries) == self.length and all(j == k and w == 1.0 for j, k, w in self.entries)


def token_ids(tokenizer: Any, prompt: str) -> tuple[list[int], int]:
    """The padded ids SDXL's ``encode_prompt`` feeds the encoder, and the count of real tokens (BOS..EOS)."""
    length = tokenizer.model_max_length
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True)["input_ids"]
    eos = tokenizer.eos_token_id
    used = ids.index(eos, 1) + 1 if eos in ids[1:] else length
    return list(ids), used


def word_spans(tokenizer: Any, prompt: str) -> list[list[int]]:
    """Token positions (BOS counted) of each whitespace-separated word, by character offsets.

    A token belongs to the word its characters overlap; a word cut off by the 77-token limit
    gets none. (P2P decodes tokens one by one and counts characters; for CLIP's BPE, which
    never merges across a space, the two agree.)
    """
    encoded = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length, return_offsets_mapping=True)
    words = [m.span() for m in re.finditer(r"\S+", prompt)]
    spans: list[list[int]] = [[] for _ in words]
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start:
            word = next((w for w, (a, b) in enumerate(words) if start < b and end > a), None)
            if word is not None:
                spans[word].append(position)
    return spans


def word_positions(tokenizer: Any, prompt: str, word: str) -> list[int]:
    """Token positions of every whitespace-separated word of ``prompt`` equal to ``word`` (P2P's
    ``get_word_inds``: exact match, so "cat," is not "cat"); empty when the prompt lacks it."""
    spans = word_spans(tokenizer, prompt)
    return sorted(p for w, span in zip(prompt.split(), spans, strict=True) if w == word for p in span)


def global_alignment(source: Sequence[int], target: Sequence[int], mismatch: Literal["map", "own"] = "map") -> list[int]:
    """Needleman-Wunsch over token ids; for each target token its aligned source index or -1.

    P2P's scores (match +1, mismatch -1, gap 0) and tie-breaks: each cell records its move
    when filled, preferring a target insertion, then a source deletion, then the diagonal, and
    the traceback follows the recorded moves - so a repeated token aligns to its EARLIER
    occurrence ("a cat" -> "a cat a cat" maps the first "a cat"). ``mismatch`` says whether a
    diagonal step between different tokens may map (``map``, P2P) or never does (``own``,
    DiT4Edit's refinement); with gap 0 > mismatch -1 a mismatch never scores best, so the two
    agree under these scores and the option only keeps each caller's rule explicit.
    """
    n, m = len(source), len(target)
    score = np.zeros((n + 1, m + 1), np.int64)
    move = np.zeros((n + 1, m + 1), np.int8)  # 1 insertion (left), 2 deletion (up), 3 diagonal
    score[0, :], move[0, 1:] = GAP * np.arange(m + 1), 1
    score[:, 0], move[1:, 0] = GAP * np.arange(n + 1), 2
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            equal = source[i - 1] == target[j - 1]
            options = [(score[i, j - 1] + GAP, 1), (score[i - 1, j] + GAP, 2)]
            if equal or mismatch == "map":
                options.append((score[i - 1, j - 1] + (MATCH if equal else MISMATCH), 3))
            best = max(value for value, _ in options)
            score[i, j], move[i, j] = best, next(code for value, code in options if value == best)
    mapper = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        code = move[i, j]
        if code == 3:
            mapper[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif code == 1:
            j -= 1  # target token inserted
        else:
            i -= 1  # source token deleted
    return mapper


def unaligned(source: Sequence[int], target: Sequence[int]) -> tuple[list[int], list[int]]:
    """(source positions no target token aligns to, target positions aligned to no source token)."""
    mapper = global_alignment(source, target)
    taken = {j for j in mapper if j >= 0}
    return [i for i in range(len(source)) if i not in taken], [k for k, j in enumerate(mapper) if j < 0]


def is_gap_free(source: Sequence[int], target: Sequence[int]) -> bool:
    """Every unaligned stretch (between two aligned tokens, or an end) has tokens on BOTH sides:
    the prompts differ only by substitutions, never by a pure insertion or deletion."""
    mapper = global_alignment(source, target)
    anchors = [(j, k) for k, j in enumerate(mapper) if j >= 0] + [(len(source), len(target))]
    previous = (-1, -1)
    for j, k in anchors:
        deleted, inserted = j - previous[0] - 1, k - previous[1] - 1
        if (deleted > 0) != (inserted > 0):
            return False
        previous = (j, k)
    return True


def word_replacement(
    source_words: Sequence[Sequence[int]], target_words: Sequence[Sequence[int]], others: Sequence[tuple[int, int]] = ()
) -> list[tuple[int, int, float]]:
    """P2P's word-level replacement entries (source token, target token, weight).

    Word k of the source maps onto word k of the target: one to one when both have as many
    tokens, else each target token gets ``1 / len(target word)`` of every source token of the
    word. ``others`` are token pairs outside words (BOS, EOS) mapped one to one. Words without
    tokens (cut by truncation) map nothing.
    """
    if len(source_words) != len(target_words):
        raise ValueError(f"replace needs prompts with the same number of words ({len(source_words)} vs {len(target_words)})")
    entries = [(j, k, 1.0) for j, k in others]
    for src, tgt in zip(source_words, target_words, strict=True):
        if not src or not tgt:
            continue
        if len(src) == len(tgt):
            entries.extend((j, k, 1.0) for j, k in zip(src, tgt, strict=True))
        else:
            entries.extend((j, k, 1.0 / len(tgt)) for k in tgt for j in src)
    return entries


def changed_words(source: str, target: str, source_spans: Sequence[Sequence[int]], target_spans: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the words whose text differs between two prompts of as many words."""
    return [i for i, (a, b) in enumerate(zip(source.split(), target.split(), strict=True)) if a != b and source_spans[i] and target_spans[i]]


def replace_entries(tokenizer: Any, source: str, target: str, used: tuple[int, int], length: int, tail: Tail) -> list[tuple[int, int, float]]:
    """The replace mapping over the full padded length; ``used`` = (source, target) real-token counts."""
    spans_s, spans_t = word_spans(tokenizer, source), word_spans(tokenizer, target)
    changed = changed_words(source, target, spans_s, spans_t)
    if tail == "released" and changed:
        # P2P's walk: word by word up to the last swapped word, then target position k <- source k
        # (offset by nothing), until the source runs out of its ``length`` positions.
        last = changed[-1]
        head = word_replacement(spans_s[: last + 1], spans_t[: last + 1], [(0, 0)])
        start_s, start_t = spans_s[last][-1] + 1, spans_t[last][-1] + 1
        return head + [(k, k, 1.0) for k in range(start_t, length) if k + (start_s - start_t) < length]
    eos = [(used[0] - 1, used[1] - 1)] if used[0] <= length and used[1] <= length else []
    entries = word_replacement(spans_s, spans_t, [(0, 0), *eos])
    return entries + [(k, k, 1.0) for k in range(used[1], length)]  # padding by position


def prompt_mapping(tokenizer: Any, source: str, target: str, tail: Tail = "shifted") -> TokenMapping:
    """The mapping over the tokenizer's full padded length (77 for SDXL): replace when gap-free, else refine."""
    source_ids, source_used = token_ids(tokenizer, source)
    target_ids, target_used = token_ids(tokenizer, target)
    length = len(target_ids)
    content_s, content_t = source_ids[:source_used], target_ids[:target_used]
    if len(source.split()) == len(target.split()) and is_gap_free(content_s, content_t):
        entries = replace_entries(tokenizer, source, target, (source_used, target_used), length, tail)
        return TokenMapping("replace", tuple(sorted(entries, key=lambda e: (e[1], e[0]))), (0.0,) * length)
    aligned = global_alignment(content_s, content_t)
    own = [1.0 if j < 0 else 0.0 for j in aligned] + [0.0] * (length - target_used)
    entries = [(j, k, 1.0) for k, j in enumerate(aligned) if j >= 0] + [(k, k, 1.0) for k in range(target_used, length)]
    return TokenMapping("refine", tuple(entries), tuple(own))


def sdxl_mapping(tokenizer: Any, tokenizer_2: Any, source: str, target: str, tail: Tail = "shifted") -> TokenMapping:
    """The mapping on SDXL's shared token axis; both tokenizers must agree on it."""
    first = prompt_mapping(tokenizer, source, target, tail)
    second = prompt_mapping(tokenizer_2, source, target, tail)
    if first != second:
        raise AlignmentError(f"SDXL's tokenizers align {source!r} -> {target!r} differently ({first.mode} vs {second.mode})")
    return first


def edited_tokens(tokenizer: Any, source: str, target: str) -> tuple[list[int], list[int]]:
    """Token positions of the words an edit changes, in the source and in the target.

    A word is changed when one of its tokens is left unaligned (swapped, inserted or deleted);
    the whole word counts. These are the words P2P's LocalBlend reads by default here.
    """
    source_ids, source_used = token_ids(tokenizer, source)
    target_ids, target_used = token_ids(tokenizer, target)
    gone, new = unaligned(source_ids[:source_used], target_ids[:target_used])

    def widen(spans: list[list[int]], positions: list[int]) -> list[int]:
        hit = set(positions)
        return sorted(p for span in spans if hit.intersection(span) for p in span)

    return widen(word_spans(tokenizer, source), gone), widen(word_spans(tokenizer, target), new)
