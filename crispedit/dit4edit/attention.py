"""DiT4Edit's unified attention control, as attention processors on PixArt's attn1 and attn2.

One model call carries both branches of an edit, stacked on the batch axis:
``[source rows..., target rows...]``, each branch with its classifier-free-guidance rows
``[unconditional, conditional]`` (or just the conditional row when guidance is off).
Target row ``j`` is paired with source row ``j``. Nothing ever flows from target to
source, so the source branch computes exactly what it would alone.

Self-attention (attn1), in the chosen blocks (DiT4Edit Eq. 11):
* steps before S: the target uses the source's queries, keys and values, i.e. its
  attention output IS the source's;
* from S on: the target's queries with the source's keys and values (MasaCtrl's mutual
  self-attention).
Both stay on fused attention (SDPA): no attention map is materialised.

Cross-attention (attn2), Prompt-to-Prompt on the T5 token maps, conditional rows only:
* replace: the target's map is the source's map through a token mapper, ``A_t = A_s M``;
* refine: target tokens aligned with equal source tokens take the source's map, new
  tokens keep their own, ``A_t = alpha * A_s[:, :, index] + (1 - alpha) * A_t``.
These maps are materialised for the target's conditional row only (N x L per head, with L
<= 300 T5 tokens: small next to self-attention's N x N).

T5's tokenizer splits a word into SentencePiece pieces ("▁ze" "bra"), sometimes with a lone
"▁" piece, and ends with ``</s>`` (no BOS). Words are matched to tokens by character
offsets, not by re-tokenising words alone (pieces depend on context).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812

from crispedit.dit4edit.merging import TokenMerge, bipartite_matching, partition

CrossMode = Literal["replace", "refine"]
SelfMode = Literal["full", "mutual"]


# --- T5 word <-> token alignment -----------------------------------------------------------


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as T5 sees it: ids of the real tokens (``</s>`` included) and each word's token positions."""

    ids: tuple[int, ...]
    words: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]  # token positions of each whitespace-separated word
    eos: tuple[int, ...]  # positions of tokens that belong to no word (``</s>``)


def prompt_tokens(tokenizer: Any, prompt: str, max_length: int) -> PromptTokens:
    """Tokenise ``prompt`` as the text encoder will (truncated to ``max_length``) and group tokens by word.

    A token belongs to the word its characters overlap; a token covering only whitespace
    (T5's lone "▁") joins the next word; a word cut off by truncation gets no tokens.
    """
    encoded = tokenizer(prompt, max_length=max_length, truncation=True, return_offsets_mapping=True, add_special_tokens=True)
    spans = [m.span() for m in re.finditer(r"\S+", prompt)]
    groups: list[list[int]] = [[] for _ in spans]
    pending: list[int] = []
    eos: list[int] = []
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end <= start:
            eos.append(position)
            continue
        word = next((w for w, (a, b) in enumerate(spans) if start < b and end > a), None)
        if word is None:
            pending.append(position)
            continue
        groups[word].extend(pending + [position])
        pending = []
    return PromptTokens(
        ids=tuple(int(i) for i in encoded["input_ids"]),
        words=tuple(prompt[a:b] for a, b in spans),
        groups=tuple(tuple(g) for g in groups),
        eos=tuple(eos + pending),
    )


def replace_mapper(source: PromptTokens, target: PromptTokens, length: int) -> torch.Tensor:
    """P2P's replacement mapper M (length x length): ``A_target = A_source @ M``.

    Needs the same number of words. Word k's source tokens map to word k's target tokens:
    one to one when the counts agree, else each target token receives ``1 / len(target
    tokens)`` of every source token of the word (P2P's rule). ``</s>`` maps to ``</s>``;
    padding maps to nothing (its attention weight is ~0 under the mask anyway).
    """
    if len(source.words) != len(target.words):
        raise ValueError(f"replace needs prompts with the same number of words ({len(source.words)} vs {len(target.words)})")
    mapper = torch.zeros(length, length)
    for src, tgt in zip(source.groups, target.groups, strict=True):
        if not src or not tgt:
            continue
        if len(src) == len(tgt):
            mapper[list(src), list(tgt)] = 1.0
        else:
            for t in tgt:
                mapper[list(src), t] = 1.0 / len(tgt)
    for s, t in zip(source.eos, target.eos, strict=False):
        mapper[s, t] = 1.0
    return mapper


def refine_mapper(source: PromptTokens, target: PromptTokens, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """P2P's refinement: (index, alpha) over target positions from a global alignment of the token ids.

    The project's one alignment (crispedit.sdxl.alignment.global_alignment: Needleman-Wunsch with
    P2P's scores, match +1, mismatch -1, gap 0) with ``mismatch="own"``: a target token aligned
    with an equal source token takes that token's map (alpha 1); inserted tokens, changed tokens
    and padding keep their own (alpha 0).
    """
    from crispedit.sdxl.alignment import global_alignment

    index = torch.zeros(length, dtype=torch.long)
    alpha = torch.zeros(length)
    for j, i in enumerate(global_alignment(source.ids, target.ids, mismatch="own")):
        if i >= 0 and j < length:
            index[j], alpha[j] = i, 1.0
    return index, alpha


# --- the controller --------------------------------------------------------------------------


@dataclass(frozen=True)
class EditControl:
    """The attention control of one edit."""

    self_blocks: frozenset[int] = frozenset()
    self_switch: int = 0  # steps < self_switch: full source Q, K, V; from it on: source K, V
    cross: CrossMode | None = None
    cross_until: int = 0  # steps < cross_until get Prompt-to-Prompt
    mapper: torch.Tensor | None = None  # replace: (L, L)
    refine_index: torch.Tensor | None = None  # refine: (L,)
    refine_alpha: torch.Tensor | None = None  # refine: (L,)
    merge_ratio: float = 0.0
    merge_seed: int = 0


@dataclass(frozen=True)
class CallLayout:
    """What one model call's batch holds."""

    branches: int  # 1: the source alone (inversion); 2: source and target (editing)
    rows: int  # rows per branch: 1 (conditional) or 2 (unconditional, conditional)
    grid: tuple[int, int]  # token grid (height, width)
    step: int  # denoising step, 0 = noisiest

    @property
    def editing(self) -> bool:
        return self.branches == 2


@dataclass
class AttentionController:
    """Shared state of the processors: the edit's control and the current call's layout."""

    control: EditControl = field(default_factory=EditControl)
    layout: CallLayout | None = None
    _partitions: dict[tuple[int, int, int], Any] = field(default_factory=dict)

    def configure(self, control: EditControl) -> None:
        self.control = control
        self._partitions.clear()

    def begin(self, layout: CallLayout) -> None:
        self.layout = layout

    def self_mode(self, block: int) -> SelfMode | None:
        layout, control = self.layout, self.control
        if layout is None or not layout.editing or block not in control.self_blocks:
            return None
        return "full" if layout.step < control.self_switch else "mutual"

    def cross_mode(self) -> CrossMode | None:
        layout, control = self.layout, self.control
        if layout is None or not layout.editing or control.cross is None or layout.step >= control.cross_until:
            return None
        return control.cross

    def merge_for(self, block: int, hidden: torch.Tensor) -> TokenMerge | None:
        """The matching of this call: from the source rows, repeated for the target rows."""
        layout, ratio = self.layout, self.control.merge_ratio
        if layout is None or ratio <= 0:
            return None
        height, width = layout.grid
        if height * width != hidden.shape[1]:
            raise ValueError(f"token grid {layout.grid} does not match {hidden.shape[1]} tokens")
        key = (block, height, width)
        if key not in self._partitions:
            generator = torch.Generator().manual_seed(self.control.merge_seed * 1_000_003 + block)
            self._partitions[key] = partition(height, width, generator)
        parts = self._partitions[key]
        if parts is None:
            return None
        per_branch = hidden.shape[0] // layout.branches
        matching = bipartite_matching(hidden[:per_branch], parts, ratio)
        if matching is None:
            return None
        return matching.repeat(layout.branches) if layout.branches > 1 else matching


# --- processors ---------------------------------------------------------------------------------


def _heads(attn: Any, x: torch.Tensor) -> torch.Tensor:
    batch = x.shape[0]
    return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


def _finish(attn: Any, out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, N, d) -> the layer's output, as diffusers' AttnProcessor2_0 ends."""
    batch, heads, _, dim = out.shape
    out = out.transpose(1, 2).reshape(batch, -1, heads * dim).to(dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    return out / attn.rescale_output_factor


def _check_pixart_attention(attn: Any) -> None:
    if attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection or attn.norm_q is not None:
        raise NotImplementedError("DiT4Edit's processors implement PixArt's attention (no spatial/group/qk norm, no residual)")


class SelfAttentionProcessor:
    """attn1 of one block: token merging and Eq. 11's source-to-target injection; diffusers' SDPA otherwise."""

    def __init__(self, controller: AttentionController, block: int) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.controller, self.block = controller, block
        self.plain = AttnProcessor2_0()

    def __call__(
        self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs: Any,
    ) -> torch.Tensor:
        mode = self.controller.self_mode(self.block)
        merge = self.controller.merge_for(self.block, hidden_states)
        if mode is None and merge is None:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        _check_pixart_attention(attn)
        if attention_mask is not None or encoder_hidden_states is not None:
            raise NotImplementedError("self-attention control expects PixArt's unmasked self-attention")
        x = merge.merge(hidden_states) if merge is not None else hidden_states
        query, key, value = (_heads(attn, proj(x)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        half = x.shape[0] // 2
        if mode == "full":  # the target's output is the source's
            source = F.scaled_dot_product_attention(query[:half], key[:half], value[:half])
            out = torch.cat([source, source])
        else:
            if mode == "mutual":  # target queries, source keys and values
                key = torch.cat([key[:half], key[:half]])
                value = torch.cat([value[:half], value[:half]])
            out = F.scaled_dot_product_attention(query, key, value)
        out = _finish(attn, out, query.dtype)
        return merge.unmerge(out) if merge is not None else out


class CrossAttentionProcessor:
    """attn2 of one block: Prompt-to-Prompt replace/refine on the target's conditional row; SDPA otherwise."""

    def __init__(self, controller: AttentionController, block: int) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.controller, self.block = controller, block
        self.plain = AttnProcessor2_0()

    def __call__(
        self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs: Any,
    ) -> torch.Tensor:
        mode = self.controller.cross_mode()
        if mode is None:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        _check_pixart_attention(attn)
        assert encoder_hidden_states is not None and self.controller.layout is not None
        batch, length = hidden_states.shape[0], encoder_hidden_states.shape[1]
        bias = None
        if attention_mask is not None:
            bias = attn.prepare_attention_mask(attention_mask, length, batch).view(batch, attn.heads, -1, length)
        query = _heads(attn, attn.to_q(hidden_states))
        key = _heads(attn, attn.to_k(encoder_hidden_states))
        value = _heads(attn, attn.to_v(encoder_hidden_states))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        rows = self.controller.layout.rows
        s, t = rows - 1, 2 * rows - 1  # the conditional rows of source and target
        control = self.controller.control
        source_maps = self._maps(attn, query[s], key[s], None if bias is None else bias[s])
        if mode == "replace":
            assert control.mapper is not None
            maps = source_maps @ control.mapper.to(source_maps.device, source_maps.dtype)
        else:
            assert control.refine_index is not None and control.refine_alpha is not None
            own = self._maps(attn, query[t], key[t], None if bias is None else bias[t])
            alpha = control.refine_alpha.to(own.device, own.dtype)
            maps = source_maps[..., control.refine_index.to(own.device)] * alpha + own * (1 - alpha)
        out = out.clone()
        out[t] = (maps @ value[t].float()).to(out.dtype)
        return _finish(attn, out, query.dtype)

    @staticmethod
    def _maps(attn: Any, query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Explicit softmax(q k^T * scale + bias) for one row, (H, N, L), in float32."""
        logits = (query.float() @ key.float().transpose(-1, -2)) * attn.scale
        if bias is not None:
            logits = logits + bias.float()
        return logits.softmax(dim=-1)


def install(transformer: Any, controller: AttentionController) -> None:
    """Give every block of a PixArt transformer the DiT4Edit processors, all sharing ``controller``."""
    processors: dict[str, Any] = {}
    for name in transformer.attn_processors:
        match = re.fullmatch(r"transformer_blocks\.(\d+)\.(attn1|attn2)\.processor", name)
        if match is None:
            raise ValueError(f"unexpected attention layer {name!r}: not a PixArt transformer?")
        block = int(match.group(1))
        kind = SelfAttentionProcessor if match.group(2) == "attn1" else CrossAttentionProcessor
        processors[name] = kind(controller, block)
    transformer.set_attn_processor(processors)


def uninstall(transformer: Any) -> None:
    """Back to diffusers' default fused attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    transformer.set_attn_processor(AttnProcessor2_0())
