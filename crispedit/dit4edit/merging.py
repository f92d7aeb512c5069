"""Token merging around PixArt's self-attention: bipartite soft matching (ToMe), merged before, unmerged after.

tomesd cannot be used on PixArt: it replaces every ``BasicTransformerBlock.forward`` with
an SD-UNet forward that knows nothing of adaLN-single (``scale_shift_table``, gates) and
calls a ``norm3`` PixArt does not have. We merge inside the self-attention processor
instead: PixArt's block applies its modulation before ``attn1`` and its gate after, both
per token, so merging the processor's input and unmerging its output is the same as
merging before self-attention and unmerging after, with the block's own code untouched.

The matching, after Bolya & Hoffman (ToMe for SD): the token grid (latent size / patch
size, row-major, PixArt's order) is cut into 2x2 windows; one token per window, drawn
with a seeded generator, is a destination; the others are sources. Each source is paired
with its most similar destination (cosine similarity of the tokens), and the ``r`` source
tokens with the best matches are averaged into their destinations. Unmerging copies a
destination's output back to the sources merged into it.

For editing, the SOURCE branch's tokens decide the matching and the target branch reuses
it, so merged token ``j`` is the same image region in both branches and the source's keys
and values can be injected into the target position by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: ToMe-SD's window: one destination per 2x2 tokens, so at most 3/4 of the tokens can merge.
WINDOW = 2
MAX_RATIO = 1.0 - 1.0 / (WINDOW * WINDOW)


@dataclass(frozen=True)
class Partition:
    """Which grid positions are destinations and which are sources (the same for every row)."""

    sources: torch.Tensor  # (Ns,) long, positions in the row-major grid
    destinations: torch.Tensor  # (Nd,) long


def partition(height: int, width: int, generator: torch.Generator) -> Partition | None:
    """One random destination per full 2x2 window; leftover rows and columns are sources. None if no window fits."""
    rows, cols = height // WINDOW, width // WINDOW
    if rows == 0 or cols == 0:
        return None
    offsets = torch.randint(WINDOW * WINDOW, (rows, cols), generator=generator)
    window_y = torch.arange(rows)[:, None] * WINDOW + offsets // WINDOW
    window_x = torch.arange(cols)[None, :] * WINDOW + offsets % WINDOW
    destinations = (window_y * width + window_x).flatten()
    is_destination = torch.zeros(height * width, dtype=torch.bool)
    is_destination[destinations] = True
    sources = torch.nonzero(~is_destination).flatten()
    return Partition(sources=sources, destinations=destinations.sort().values)


@dataclass(frozen=True)
class TokenMerge:
    """One matching: merges (B, N, C) tokens into (B, N - r, C) and spreads outputs back.

    ``kept``, ``moved`` index the source set; ``into`` indexes the destination set.
    """

    parts: Partition
    kept: torch.Tensor  # (B, Ns - r): sources left alone
    moved: torch.Tensor  # (B, r): sources averaged into a destination
    into: torch.Tensor  # (B, r): the destination each moved source goes to

    @property
    def tokens(self) -> int:
        return int(self.parts.sources.numel() + self.parts.destinations.numel())

    def repeat(self, times: int) -> TokenMerge:
        """The same matching for ``times`` stacked copies of the batch (the target branch reuses the source's)."""
        return TokenMerge(self.parts, self.kept.repeat(times, 1), self.moved.repeat(times, 1), self.into.repeat(times, 1))

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[-1]
        sources = x[:, self.parts.sources.to(x.device)]
        destinations = x[:, self.parts.destinations.to(x.device)]
        kept = sources.gather(1, _expand(self.kept, channels))
        moved = sources.gather(1, _expand(self.moved, channels))
        merged = destinations.scatter_reduce(1, _expand(self.into, channels), moved, reduce="mean", include_self=True)
        return torch.cat([kept, merged], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        batch, _, channels = y.shape
        n_kept = self.kept.shape[1]
        kept, destinations = y[:, :n_kept], y[:, n_kept:]
        moved = destinations.gather(1, _expand(self.into, channels))
        sources = self.parts.sources.to(y.device)
        out = y.new_empty(batch, self.tokens, channels)
        out[:, self.parts.destinations.to(y.device)] = destinations
        out.scatter_(1, _expand(sources[self.kept], channels), kept)
        out.scatter_(1, _expand(sources[self.moved], channels), moved)
        return out


def _expand(index: torch.Tensor, channels: int) -> torch.Tensor:
    return index[..., None].expand(-1, -1, channels)


def bipartite_matching(metric: torch.Tensor, parts: Partition, ratio: float) -> TokenMerge | None:
    """Match each source token to its most similar destination; merge the ``ratio * N`` best pairs.

    ``metric`` is (B, N, C); each row gets its own matching. None when nothing merges.
    """
    count = min(int(metric.shape[1] * ratio), int(parts.sources.numel()))
    if count <= 0:
        return None
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    sources = unit[:, parts.sources.to(metric.device)]
    destinations = unit[:, parts.destinations.to(metric.device)]
    scores = sources.float() @ destinations.float().transpose(1, 2)  # (B, Ns, Nd)
    best, best_index = scores.max(dim=-1)
    order = torch.sort(best, dim=-1, descending=True, stable=True).indices
    moved, kept = order[:, :count], order[:, count:]
    return TokenMerge(parts, kept, moved, best_index.gather(1, moved))
