"""An independent reference of Prompt-to-Prompt's attention control (Hertz et al., 2022).

Written from the paper's definitions and the rules read in the released code
(google/prompt-to-prompt @9c472e4: seq_aligner.py, ptp_utils.py, prompt-to-prompt_stable.ipynb,
null_text_w_ptp.ipynb; diffusers examples/community/pipeline_prompt2prompt.py @58eb52c), NOT
from crispedit's code. Nothing here imports crispedit. Each rule's docstring names the released
behaviour it follows; the test against it is tests/sdxl/test_p2p_reference.py.

It works on explicit attention probabilities, one layer at a time:

    probs: (rows, heads, queries, keys) after the softmax, rows = [uncond half | cond half]
           with classifier-free guidance, each half holding the prompts in ``rows_per_half``.

Two row layouts are covered by listing (source row, target row) pairs within a half:

* P2P's: [source, target_1, ..., target_K]  -> pairs (0, 1), (0, 2), ...
* crispedit's: [s1, t1, s2, t2, ...]         -> pairs (0, 1), (2, 3), ...

Published-method defaults (``Rules.published()``): edit the conditional half only; inject
self-attention only in layers with at most 16x16 = 256 queries (stable notebook; the
null-text notebook uses 32x32 = 1024) for steps int(N*a) <= i < int(N*b); replace
cross-attention while alpha[i] = 1 with alpha built on N+1 rows, start/end int(x*(N+1)).
Knobs exist to express other rules (both halves, every resolution) so the same maths can be
checked against other implementations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

MAX_LEN = 77
MATCH, MISMATCH, GAP = 1, -1, 0


# --------------------------------------------------------------------------------------------
# Tokens and words
# --------------------------------------------------------------------------------------------


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids with BOS and EOS, unpadded and untruncated (P2P calls ``tokenizer.encode``)."""
    return list(tokenizer.encode(text))


def word_spans(tokenizer: Any, text: str) -> list[list[int]]:
    """For each word of ``text.split(" ")``, the token positions (BOS = 0) it covers.

    The rule of the released code: decode every content token alone, strip '#', and give
    tokens to the current word until their decoded lengths add up to the word's length.
    """
    words = text.split(" ")
    pieces = [tokenizer.decode([t]).strip("#") for t in encode(tokenizer, text)[1:-1]]
    spans: list[list[int]] = [[] for _ in words]
    word, filled = 0, 0
    for position, piece in enumerate(pieces, start=1):
        if word >= len(words):
            raise ValueError(f"tokens of {text!r} outrun its words")
        spans[word].append(position)
        filled += len(piece)
        if filled >= len(words[word]):
            word, filled = word + 1, 0
    return spans


def word_positions(tokenizer: Any, text: str, word: str | int) -> list[int]:
    """Token positions of a word given by its text (every exact occurrence) or its word index."""
    spans = word_spans(tokenizer, text)
    if isinstance(word, int):
        chosen = [word]
    else:
        chosen = [i for i, w in enumerate(text.split(" ")) if w == word]
    return sorted(p for i in chosen for p in spans[i])


# --------------------------------------------------------------------------------------------
# Alignment (seq_aligner)
# --------------------------------------------------------------------------------------------


def global_align(source: Sequence[int], target: Sequence[int], match: int = MATCH, mismatch: int = MISMATCH, gap: int = GAP) -> list[int]:
    """Needleman-Wunsch; for each target token the source index it aligns to, or -1 (inserted).

    Tie-break as released: when filling a cell, a target insertion ("left") wins over a
    source deletion ("up"), which wins over the diagonal; the traceback follows the moves
    recorded then. Every diagonal step maps (a mismatch too, though with gap 0 > mismatch
    a mismatch never wins).
    """
    n, m = len(source), len(target)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[""] * (m + 1) for _ in range(n + 1)]
    for j in range(1, m + 1):
        score[0][j], move[0][j] = j * gap, "left"
    for i in range(1, n + 1):
        score[i][0], move[i][0] = i * gap, "up"
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = (
                ("left", score[i][j - 1] + gap),
                ("up", score[i - 1][j] + gap),
                ("diag", score[i - 1][j - 1] + (match if source[i - 1] == target[j - 1] else mismatch)),
            )
            best = max(v for _, v in options)
            score[i][j] = best
            move[i][j] = next(name for name, v in options if v == best)
    mapping = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        step = move[i][j]
        if step == "diag":
            mapping[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif step == "left":
            j -= 1
        else:
            i -= 1
    return mapping


def refinement_mapper(tokenizer: Any, source: str, target: str, max_len: int = MAX_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper (max_len,) long, alphas (max_len,) float) of AttentionRefine.

    Content positions k < len(target tokens): mapper[k] = aligned source position (or -1,
    alpha 0: the token keeps its own attention). Positions after the target's EOS map BY
    POSITION (mapper[k] = k, alpha 1), whatever the source holds there.
    """
    x, y = encode(tokenizer, source), encode(tokenizer, target)
    if len(y) > max_len:
        raise ValueError(f"{target!r} has {len(y)} tokens > {max_len}")
    aligned = global_align(x, y)
    mapper = torch.arange(max_len, dtype=torch.int64)
    alphas = torch.ones(max_len)
    for k, s in enumerate(aligned):
        mapper[k] = s
        alphas[k] = 0.0 if s < 0 else 1.0
    return mapper, alphas


def replacement_mapper(
    tokenizer: Any, source: str, target: str, max_len: int = MAX_LEN, tail: Literal["released", "shifted"] = "released"
) -> torch.Tensor:
    """(max_len, max_len) matrix M of AttentionReplace: target column n = sum_w source[w] * M[w, n].

    Word-level: the prompts must have as many space-separated words. Unchanged words map
    token to token (shifted by earlier length differences); a changed word maps one-to-one
    when both sides have as many tokens, else every source token gives 1/len(target tokens)
    to every target token. ``tail="released"`` reproduces the released code after the LAST
    changed word: M[j, j] = 1, i.e. by target position (not shifted), so when the swapped
    words differ in token count, the words after them read the wrong source columns.
    ``tail="shifted"`` keeps shifting (what the paper's word swap intends).
    """
    words_x, words_y = source.split(" "), target.split(" ")
    if len(words_x) != len(words_y):
        raise ValueError(f"replace needs as many words: {len(words_x)} vs {len(words_y)}")
    changed = [i for i, (a, b) in enumerate(zip(words_x, words_y)) if a != b]
    spans_x, spans_y = word_spans(tokenizer, source), word_spans(tokenizer, target)
    blocks = [(spans_x[i], spans_y[i]) for i in changed]
    matrix = torch.zeros(max_len, max_len)
    i = j = block = 0
    while i < max_len and j < max_len:
        if block < len(blocks) and blocks[block][0][0] == i:
            src, tgt = blocks[block]
            if len(src) == len(tgt):
                for a, b in zip(src, tgt):
                    matrix[a, b] = 1.0
            else:
                for b in tgt:
                    for a in src:
                        matrix[a, b] = 1.0 / len(tgt)
            i, j, block = i + len(src), j + len(tgt), block + 1
        elif block < len(blocks) or tail == "shifted":
            matrix[i, j] = 1.0
            i, j = i + 1, j + 1
        else:
            matrix[j, j] = 1.0
            i, j = i + 1, j + 1
    return matrix


@dataclass(frozen=True)
class Region:
    """Source and target token positions between two consecutive aligned (matched) tokens."""

    source: tuple[int, ...]
    target: tuple[int, ...]

    @property
    def kind(self) -> str:
        if self.source and self.target:
            return "substitution"
        return "insertion" if self.target else ("deletion" if self.source else "empty")


def alignment_regions(source_ids: Sequence[int], target_ids: Sequence[int]) -> list[Region]:
    """The unaligned stretches of the global alignment, each between two anchors (or an end)."""
    aligned = global_align(source_ids, target_ids)
    anchors = [(s, t) for t, s in enumerate(aligned) if s >= 0]
    regions = []
    prev_s, prev_t = -1, -1
    for s, t in [*anchors, (len(source_ids), len(target_ids))]:
        region = Region(tuple(range(prev_s + 1, s)), tuple(range(prev_t + 1, t)))
        if region.kind != "empty":
            regions.append(region)
        prev_s, prev_t = s, t
    return regions


def is_gap_free(source_ids: Sequence[int], target_ids: Sequence[int]) -> bool:
    """No pure insertion or deletion: every unaligned stretch replaces something by something."""
    return all(r.kind == "substitution" for r in alignment_regions(source_ids, target_ids))


def choose_edit(tokenizer: Any, source: str, target: str) -> Literal["replace", "refine"]:
    """Issue 21's rule (P2P itself leaves the choice to the user): replace only when the
    alignment is gap-free and the prompts have as many words (P2P's replace precondition)."""
    x, y = encode(tokenizer, source), encode(tokenizer, target)
    if is_gap_free(x, y) and len(source.split(" ")) == len(target.split(" ")):
        return "replace"
    return "refine"


# --------------------------------------------------------------------------------------------
# Schedules and re-weighting
# --------------------------------------------------------------------------------------------

Bounds = float | tuple[float, float]


def _window(bounds: Bounds, rows: int) -> tuple[int, int]:
    low, high = (0.0, float(bounds)) if isinstance(bounds, (int, float)) else (float(bounds[0]), float(bounds[1]))
    return int(low * rows), int(high * rows)


def cross_replace_alpha(
    tokenizer: Any, targets: Sequence[str], num_steps: int, schedule: Bounds | Mapping[str, Bounds], max_len: int = MAX_LEN
) -> torch.Tensor:
    """(num_steps + 1, len(targets), max_len): 1 where target k's token takes the edited map at step i.

    A float c means (0, c). Rows = N + 1 and a window (a, b) covers int(a*(N+1)) <= i <
    int(b*(N+1)). A dict gives "default_" (else (0, 1)) for every token plus a window per
    word (found in each TARGET prompt) for that word's tokens.
    """
    rows = num_steps + 1
    spec: dict[str, Bounds] = dict(schedule) if isinstance(schedule, Mapping) else {"default_": schedule}
    spec.setdefault("default_", (0.0, 1.0))
    alpha = torch.zeros(rows, len(targets), max_len)
    start, end = _window(spec["default_"], rows)
    alpha[start:end] = 1.0
    for word, bounds in spec.items():
        if word == "default_":
            continue
        start, end = _window(bounds, rows)
        for k, prompt in enumerate(targets):
            positions = word_positions(tokenizer, prompt, word)
            if positions:
                alpha[:, k, positions] = 0.0
                alpha[start:end, k, positions] = 1.0
    return alpha


def self_replace_window(num_steps: int, bounds: Bounds) -> tuple[int, int]:
    """Steps int(N*a) <= i < int(N*b) of self-attention injection (a float f means (0, f))."""
    return _window(bounds, num_steps)


def equalizer(tokenizer: Any, text: str, weights: Mapping[str, float], max_len: int = MAX_LEN) -> torch.Tensor:
    """(max_len,) multipliers of AttentionReweight, one per word of ``text`` (the null-text
    notebook's form; the stable notebook's gives all chosen words the same value)."""
    out = torch.ones(max_len)
    for word, value in weights.items():
        out[word_positions(tokenizer, text, word)] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# The controller
# --------------------------------------------------------------------------------------------


@dataclass
class TargetEdit:
    """How one target row takes attention from its source row."""

    source_row: int  # index within a half
    target_row: int
    cross: Literal["replace", "refine", "none"]  # "none": the source's maps as they are (re-weight alone)
    cross_alpha: torch.Tensor  # (N + 1, max_len) or (steps, max_len): which steps/tokens take the edit
    self_window: tuple[int, int]
    replace_matrix: torch.Tensor | None = None  # (max_len, max_len)
    refine: tuple[torch.Tensor, torch.Tensor] | None = None  # (mapper, alphas)
    reweight: torch.Tensor | None = None  # (max_len,)

    def cross_map(self, base: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """The edited map of (heads, queries, keys) before the time/word alpha is applied."""
        if self.cross == "replace":
            assert self.replace_matrix is not None
            edited = torch.einsum("hqw,wn->hqn", base, self.replace_matrix.to(base))
        elif self.cross == "refine":
            assert self.refine is not None
            mapper, alphas = self.refine
            alphas = alphas.to(base)
            edited = base[:, :, mapper.to(base.device)] * alphas + own * (1 - alphas)
        else:
            edited = base
        if self.reweight is not None:
            edited = edited * self.reweight.to(base)
        return edited


@dataclass
class Rules:
    """Where edits apply. ``published()`` is the released method's choice."""

    self_halves: Literal["cond", "both"] = "cond"
    cross_halves: Literal["cond", "both"] = "cond"
    self_max_queries: int | None = 16 * 16  # None: every resolution
    cfg: bool = True

    @classmethod
    def published(cls, self_max_queries: int = 16 * 16) -> Rules:
        """Conditional half only; self maps of at most 256 queries (stable notebook) or 1024 (null-text)."""
        return cls("cond", "cond", self_max_queries, True)


@dataclass
class ReferenceController:
    """Edits attention layer by layer; ``step`` is the 0-based denoising step the UNet is in."""

    edits: Sequence[TargetEdit]
    rows_per_half: int
    rules: Rules = field(default_factory=Rules)
    blend: LocalBlend | None = None
    step: int = 0

    def halves(self, rows: int, is_cross: bool) -> list[int]:
        """Which halves of the batch are edited (without CFG the whole batch is one, conditional, half)."""
        if not self.rules.cfg:
            if rows != self.rows_per_half:
                raise ValueError(f"{rows} rows without CFG, expected {self.rows_per_half}")
            return [0]
        if rows != 2 * self.rows_per_half:
            raise ValueError(f"{rows} rows with CFG, expected {2 * self.rows_per_half}")
        which = self.rules.cross_halves if is_cross else self.rules.self_halves
        return [1] if which == "cond" else [0, 1]

    def edit(self, probs: torch.Tensor, is_cross: bool, place: str) -> torch.Tensor:
        """probs (rows, heads, queries, keys) -> the edited probabilities (a new tensor)."""
        out = probs.clone()
        queries = probs.shape[2]
        for half in self.halves(probs.shape[0], is_cross):
            offset = half * self.rows_per_half
            for e in self.edits:
                s, t = offset + e.source_row, offset + e.target_row
                base, own = probs[s], probs[t]
                if is_cross:
                    alpha = e.cross_alpha[self.step].to(base)
                    out[t] = e.cross_map(base, own) * alpha + (1 - alpha) * own
                elif e.self_window[0] <= self.step < e.self_window[1] and (
                    self.rules.self_max_queries is None or queries <= self.rules.self_max_queries
                ):
                    out[t] = base
        if is_cross and self.blend is not None:
            cond = out[self.rows_per_half:] if self.rules.cfg else out
            self.blend.record(cond, place)
        return out

    def end_step(self, latents: torch.Tensor) -> torch.Tensor:
        """After the scheduler step: LocalBlend (if any), then move to the next step."""
        if self.blend is not None:
            latents = self.blend.apply(latents, self.step)
        self.step += 1
        return latents


# --------------------------------------------------------------------------------------------
# LocalBlend
# --------------------------------------------------------------------------------------------


@dataclass
class LocalBlend:
    """A mask from the edited words' cross-attention, recomputed after every step.

    Per row r: the conditional cross-attention maps of the chosen layers (those with
    ``map_hw`` queries in ``places``; released: the 16x16 layers of the down and up blocks,
    not the mid block), SUMMED over all steps so far (post-edit maps, as stored), summed over
    the row's word tokens, averaged over layers x heads; 3x3 max-pool (stride 1, pad 1);
    nearest-resized to the latent; divided by its maximum; > threshold. A target's mask is
    the union with its source's; latents become x_s + mask * (x_t - x_s).
    ``start_blend`` (null-text notebook: 0.2; stable notebook: none) skips the first
    int(start_blend * N) steps; ``subtract`` words (null-text) remove their own unpooled
    mask (threshold ``threshold_subtract``) from the result.
    """

    words: Sequence[Sequence[int]]  # token positions per row (of one half)
    pairs: Sequence[tuple[int, int]]  # (source row, target row)
    map_hw: tuple[int, int] = (16, 16)
    places: Sequence[str] = ("down", "up")
    threshold: float = 0.3
    start_blend: float = 0.0
    num_steps: int = 50
    subtract: Sequence[Sequence[int]] | None = None
    threshold_subtract: float = 0.3
    max_len: int = MAX_LEN
    coverage: list[list[float]] = field(default_factory=list)  # per applied step: mask fraction per pair
    _step_maps: list[torch.Tensor] = field(default_factory=list)
    _sums: list[torch.Tensor] | None = None

    def record(self, cond_probs: torch.Tensor, place: str) -> None:
        if place in self.places and cond_probs.shape[2] == self.map_hw[0] * self.map_hw[1]:
            self._step_maps.append(cond_probs.detach().clone())

    def _fold(self) -> None:
        if self._sums is None:
            self._sums = self._step_maps
        else:
            if len(self._sums) != len(self._step_maps):
                raise RuntimeError("a different number of blend layers this step")
            self._sums = [a + b for a, b in zip(self._sums, self._step_maps, strict=True)]
        self._step_maps = []

    def _onehot(self, positions: Sequence[Sequence[int]], like: torch.Tensor) -> torch.Tensor:
        hot = torch.zeros(len(positions), self.max_len, dtype=like.dtype, device=like.device)
        for r, ps in enumerate(positions):
            hot[r, list(ps)] = 1.0
        return hot

    def _mask(self, size: tuple[int, int], positions: Sequence[Sequence[int]], pool: bool, threshold: float) -> torch.Tensor:
        assert self._sums is not None
        maps = torch.cat(self._sums, dim=1)  # (rows, layers*heads, queries, keys)
        hot = self._onehot(positions, maps)
        words = (maps * hot[:, None, None, :]).sum(-1).mean(1)  # (rows, queries)
        grid = words.reshape(words.shape[0], 1, *self.map_hw)
        if pool:
            grid = F.max_pool2d(grid, (3, 3), (1, 1), padding=(1, 1))
        grid = F.interpolate(grid, size=size)
        grid = grid / grid.amax(dim=(2, 3), keepdim=True)
        return grid > threshold

    def apply(self, latents: torch.Tensor, step: int) -> torch.Tensor:
        self._fold()
        if step + 1 <= int(self.start_blend * self.num_steps):
            return latents
        size = tuple(latents.shape[2:])
        keep = self._mask(size, self.words, True, self.threshold)
        removed = self._mask(size, self.subtract, False, self.threshold_subtract) if self.subtract is not None else None
        out = latents.clone()
        fractions = []
        for s, t in self.pairs:
            mask = keep[t] | keep[s]
            if removed is not None:
                mask = mask & ~(removed[t] | removed[s])
            fractions.append(float(mask.float().mean()))
            m = mask.to(latents.dtype)
            out[t] = latents[s] + m * (latents[t] - latents[s])
        self.coverage.append(fractions)
        return out


# --------------------------------------------------------------------------------------------
# A diffusers attention processor that materialises probabilities for the controller
# --------------------------------------------------------------------------------------------


class ReferenceAttnProcessor:
    """diffusers' plain attention (AttnProcessor) with the probabilities passed through the controller."""

    def __init__(self, controller: ReferenceController, place: str) -> None:
        self.controller = controller
        self.place = place

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        batch, queries, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, attention_mask)
        keys = probs.shape[-1]
        probs = self.controller.edit(probs.view(batch, attn.heads, queries, keys), is_cross, self.place)
        out = attn.batch_to_head_dim(torch.bmm(probs.reshape(batch * attn.heads, queries, keys), v))
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def place_of(name: str) -> str:
    return "down" if name.startswith("down_blocks") else "mid" if name.startswith("mid_block") else "up"


def install(unet: Any, controller: ReferenceController) -> dict[str, Any]:
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({name: ReferenceAttnProcessor(controller, place_of(name)) for name in saved})
    return saved
