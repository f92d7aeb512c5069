"""The sample order: a pure function of (seed, batch index), made of whole row groups.

Arithmetic only, no I/O. Three levels:

1. **Passes.** Dataset d is an endless run of passes; pass p visits its row groups in a
   shuffled order and the rows of each row group in a shuffled order (seeds (seed, d, p)).
2. **Epochs and ratios.** Epoch e takes n_d = round(N r_d / sum r) rows of dataset d, the
   window [e n_d, (e+1) n_d) of its run of passes (N = all datasets' rows). So each epoch holds
   each dataset in its ratio exactly; a small dataset with a large ratio repeats inside an
   epoch, a large one with a small ratio continues where the previous epoch stopped. The
   window cuts that run into *pieces*: a range of one row group's shuffled rows, usually all.
3. **Streams.** The epoch's pieces are shuffled and dealt to `streams` streams, each piece to
   the stream with the fewest rows so far in the epoch (ties rotate with the epoch). A stream
   mixes `mix` consecutive pieces at a time (their rows shuffled together) and is cut into
   batches. Global batch g is batch g // streams of stream g % streams.

A loader worker owns whole streams (stream s goes to the worker with s mod W), so it reads
whole row groups that no other worker reads, and any worker count dividing `streams` gives
the same batches in the same order. A resumed run starts at a batch index: each stream's
offset is counted from the plan without reading anything.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Piece:
    """Rows [lo, hi) of the shuffled row order of one row group in one pass of one dataset."""

    dataset: int
    run: int  # the pass
    group: int
    lo: int
    hi: int

    def __len__(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True)
class SampleRef:
    dataset: int
    group: int
    row: int
    epoch: int


class EpochPlan:
    """Which pieces each stream reads in each epoch, and in what order its samples come."""

    def __init__(self, group_rows: list[np.ndarray], ratios: list[float], seed: int, streams: int, mix: int) -> None:
        if len(group_rows) != len(ratios) or not group_rows:
            raise ValueError("need one ratio per dataset")
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"dataset ratios must be >= 0 and not all 0, got {ratios}")
        if streams < 1 or mix < 1:
            raise ValueError(f"streams ({streams}) and shuffle_row_groups ({mix}) must be >= 1")
        self.group_rows = [np.asarray(g, dtype=np.int64) for g in group_rows]
        self.sizes = [int(g.sum()) for g in self.group_rows]
        total = sum(self.sizes)
        weights = np.asarray(ratios, dtype=np.float64) / float(sum(ratios))
        self.per_epoch = [int(round(total * w)) for w in weights]
        if not any(self.per_epoch):  # a handful of rows split by ratios can round to nothing
            self.per_epoch[int(np.argmax(weights))] = 1
        self.seed = seed
        self.streams = streams
        self.mix = mix

    # -- level 1: passes ----------------------------------------------------------------
    @lru_cache(maxsize=64)  # noqa: B019 - the plan lives as long as the loader
    def _pass_order(self, dataset: int, run: int) -> tuple[np.ndarray, np.ndarray]:
        """(row-group order, start offset of each in the pass) of one pass."""
        rng = np.random.default_rng([self.seed, 11, dataset, run])
        order = rng.permutation(len(self.group_rows[dataset]))
        starts = np.concatenate([[0], np.cumsum(self.group_rows[dataset][order])[:-1]])
        return order, starts

    def rows_of(self, piece: Piece) -> np.ndarray:
        """Row offsets inside the row group, in the order the piece uses them."""
        n = int(self.group_rows[piece.dataset][piece.group])
        perm = np.random.default_rng([self.seed, 12, piece.dataset, piece.run, piece.group]).permutation(n)
        return perm[piece.lo:piece.hi]

    def _dataset_pieces(self, dataset: int, lo: int, hi: int) -> list[Piece]:
        """Pieces covering rows [lo, hi) of the dataset's endless run of passes."""
        size = self.sizes[dataset]
        pieces = []
        run = lo // size
        while run * size < hi:
            order, starts = self._pass_order(dataset, run)
            base = run * size
            first = max(0, int(np.searchsorted(starts, lo - base, side="right")) - 1)
            for k in range(first, len(order)):
                a = base + int(starts[k])
                if a >= hi:
                    break
                g = int(order[k])
                b = a + int(self.group_rows[dataset][g])
                s, t = max(a, lo), min(b, hi)
                if s < t:
                    pieces.append(Piece(dataset, run, g, s - a, t - a))
            run += 1
        return pieces

    # -- levels 2 and 3: epochs and streams ----------------------------------------------
    @lru_cache(maxsize=8)  # noqa: B019
    def epoch(self, epoch: int) -> tuple[tuple[Piece, ...], ...]:
        """The pieces of each stream in this epoch, in reading order."""
        pieces: list[Piece] = []
        for d, n in enumerate(self.per_epoch):
            if n:
                pieces += self._dataset_pieces(d, epoch * n, (epoch + 1) * n)
        order = np.random.default_rng([self.seed, 13, epoch]).permutation(len(pieces))
        heap = [(0, (s - epoch) % self.streams, s) for s in range(self.streams)]
        heapq.heapify(heap)
        dealt: list[list[Piece]] = [[] for _ in range(self.streams)]
        for i in order:
            rows, tie, s = heapq.heappop(heap)
            dealt[s].append(pieces[i])
            heapq.heappush(heap, (rows + len(pieces[i]), tie, s))
        return tuple(tuple(p) for p in dealt)

    def mix_groups(self, epoch: int, stream: int) -> list[tuple[Piece, ...]]:
        """The stream's pieces in this epoch, `mix` at a time."""
        pieces = self.epoch(epoch)[stream]
        return [pieces[i:i + self.mix] for i in range(0, len(pieces), self.mix)]

    def mixed_refs(self, epoch: int, stream: int, index: int, group: tuple[Piece, ...]) -> list[SampleRef]:
        """The rows of one mix group, shuffled together."""
        refs = [SampleRef(p.dataset, p.group, int(r), epoch) for p in group for r in self.rows_of(p)]
        perm = np.random.default_rng([self.seed, 14, epoch, stream, index]).permutation(len(refs))
        return [refs[i] for i in perm]

    def walk(self, stream: int, start: int = 0) -> Iterator[tuple[tuple[Piece, ...], list[SampleRef], int]]:
        """(mix group, all its samples, how many of them to skip) of a stream from its
        `start`-th sample on; whole epochs and mix groups before `start` are skipped by
        counting, without reading."""
        skipped, epoch = 0, 0
        while True:
            for index, group in enumerate(self.mix_groups(epoch, stream)):
                n = sum(len(p) for p in group)
                if skipped + n <= start:
                    skipped += n
                    continue
                refs = self.mixed_refs(epoch, stream, index, group)
                cut = max(0, start - skipped)
                skipped += n
                yield group, refs, cut
            epoch += 1
