"""Multi-index hashing: the rows of a whole build within d bits of each other, without comparing all pairs.

A row's hash is one or more 64-bit parts (a pair has two: source and target pHash), and two
rows are within ``d`` when *every* part is within ``d`` bits (the larger distance counts, as
in :func:`crispedit.filters.phash.pair_distance`). Pigeonhole: split a 64-bit part into
``d + 1`` disjoint bands; two parts within ``d`` bits agree exactly on at least one band. So
two rows within ``d`` agree exactly on some choice of one band per part, and each of the
``(d + 1) ** parts`` choices is a key (the chosen bands side by side, 2 x 64 / (d + 1) bits
for a pair: 25 bits at d = 4). Rows are bucketed per key by a stable numpy sort of uint64
keys, the pairs inside a bucket are the candidates, and a vectorised popcount keeps those
truly within ``d``. Random hashes collide on a 25-bit key with probability 2**-25, so a
million rows verify about one candidate each instead of a million.

Cost: ``(d + 1) ** parts`` sorts of n keys, O(n log n) each, plus the candidates (the true
near pairs and the random key collisions), verified in chunks of at most ``budget``. Memory:
the hashes, one key array with its sort order, one chunk of candidates, and the verified
pairs. Identical hashes are collapsed to their first row before the search (a build that
holds one picture ten thousand times costs one row, not fifty million pairs); a cluster of m
rows that are near but not identical still costs m**2 / 2 pairs. Where the bands get so
narrow that a key collides with a large share of the rows (d >= 10 for a pair, d >= 8 for one
hash), the greedy scan over kept rows (:func:`_scan`, quadratic) is as cheap and is used instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS = 64
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier: spreads a key too wide for 64 bits


@dataclass(frozen=True)
class Copies:
    """For each row in order: the earliest kept row within d (-1: kept itself), how far, and the work done."""

    match: np.ndarray  # int64, -1 where the row is kept
    distance: np.ndarray  # int64, 0 where kept
    candidates: int  # pairs whose distance was computed


def band_layout(bands: int) -> list[tuple[int, int]]:
    """(shift, width) of ``bands`` disjoint bands covering 64 bits, widths differing by at most one."""
    if not 1 <= bands <= BITS:
        raise ValueError(f"a 64-bit hash splits into 1 to 64 bands, not {bands}")
    base, extra = divmod(BITS, bands)
    layout, shift = [], 0
    for b in range(bands):
        width = base + (1 if b < extra else 0)
        layout.append((shift, width))
        shift += width
    return layout


def row_distance(hashes: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The larger part distance between rows ``left[k]`` and ``right[k]`` of a (n, parts) uint64 array."""
    return np.bitwise_count(hashes[left] ^ hashes[right]).max(axis=1).astype(np.int64)


def _as_rows(hashes: np.ndarray) -> np.ndarray:
    rows = np.asarray(hashes, dtype=np.uint64)
    if rows.ndim == 1:
        rows = rows[:, None]
    if rows.ndim != 2 or rows.shape[1] < 1:
        raise ValueError(f"hashes are an (n, parts) array of uint64, not shape {rows.shape}")
    return rows


def index_pays(max_distance: int, parts: int) -> bool:
    """Whether the band index beats the scan: bands exist and all keys together collide with under 1/16 of the rows."""
    if max_distance + 1 > BITS:
        return False
    key_bits = min(BITS, parts * (BITS // (max_distance + 1)))
    return (max_distance + 1) ** parts < 2.0 ** (key_bits - 4)


def _combo_key(rows: np.ndarray, layout: list[tuple[int, int]], choice: tuple[int, ...]) -> np.ndarray:
    """One band per part (``choice``), side by side in a uint64; mixed by multiplication when wider than 64 bits."""
    key = np.zeros(len(rows), dtype=np.uint64)
    used = 0
    for part, band in enumerate(choice):
        shift, width = layout[band]
        value = (rows[:, part] >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        if used + width <= BITS:
            key |= value << np.uint64(used)
            used += width
        else:  # equal bands still give equal keys; a collision only adds a candidate
            key = (key * _MIX) ^ value
    return key


def _choices(bands: int, parts: int) -> list[tuple[int, ...]]:
    grid = np.indices((bands,) * parts).reshape(parts, -1).T
    return [tuple(int(v) for v in c) for c in grid]


def near_pairs(hashes: np.ndarray, max_distance: int, budget: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, int]:
    """Every (i, j), i < j, of rows within ``max_distance`` on every part: (i, j, candidates), sorted by j then i.

    ``budget`` bounds the candidates expanded at once (memory: about 50 bytes each, 50 MiB at the default).
    """
    rows = _as_rows(hashes)
    n, parts = rows.shape
    if max_distance + 1 > BITS:
        raise ValueError(f"the band index needs max_distance + 1 <= {BITS} bands, not {max_distance + 1}")
    if n > 1 << 32:
        raise ValueError("more than 2**32 rows")
    layout = band_layout(max_distance + 1)
    found: list[np.ndarray] = []
    candidates = 0
    for choice in _choices(max_distance + 1, parts):
        key = _combo_key(rows, layout, choice)
        order = np.argsort(key, kind="stable")  # equal keys keep row order: a bucket lists its rows ascending
        sorted_key = key[order]
        del key
        first = np.ones(n, dtype=bool)
        first[1:] = sorted_key[1:] != sorted_key[:-1]
        del sorted_key
        start = np.flatnonzero(first)
        rank = np.arange(n, dtype=np.int64) - np.repeat(start, np.diff(np.append(start, n)))  # earlier rows in the bucket
        del first
        busy = np.flatnonzero(rank)  # sorted positions with at least one earlier row in their bucket
        if busy.size == 0:
            continue
        counts = rank[busy]
        ends = np.cumsum(counts)
        candidates += int(ends[-1])
        lo = 0
        while lo < busy.size:  # chunks of at most `budget` candidates (one position's bucket prefix at least)
            done = int(ends[lo - 1]) if lo else 0
            hi = max(lo + 1, int(np.searchsorted(ends, done + budget, side="right")))
            pos, cnt = busy[lo:hi], counts[lo:hi]
            later = np.repeat(pos, cnt)
            offset = np.arange(int(cnt.sum()), dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            earlier = later - np.repeat(cnt, cnt) + offset  # the bucket's rows before `later`, in order
            i, j = order[earlier], order[later]
            del later, offset, earlier
            near = np.ones(i.size, dtype=bool)
            for part in range(parts):  # one part at a time: a few bytes a candidate
                near &= np.bitwise_count(rows[i, part] ^ rows[j, part]) <= max_distance
            found.append((j[near].astype(np.uint64) << np.uint64(32)) | i[near].astype(np.uint64))
            lo = hi
        if len(found) > 1:  # one choice's pairs at a time: the union stays the size of the near pairs
            found = [np.unique(np.concatenate(found))]
    packed = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.uint64)
    return (packed & np.uint64(0xFFFFFFFF)).astype(np.int64), (packed >> np.uint64(32)).astype(np.int64), candidates


def _greedy(n: int, earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """Resolve near pairs (sorted by later, then earlier) in row order: each row's earliest kept neighbour, or -1."""
    match = np.full(n, -1, dtype=np.int64)
    if later.size == 0:
        return match
    kept = np.ones(n, dtype=bool)
    starts = np.flatnonzero(np.r_[True, later[1:] != later[:-1]])
    stops = np.append(starts[1:], later.size).tolist()
    heads, prior = later[starts].tolist(), earlier.tolist()
    for row, a, b in zip(heads, starts.tolist(), stops, strict=True):
        for i in prior[a:b]:  # ascending: the first kept one is the earliest
            if kept[i]:
                kept[row] = False
                match[row] = i
                break
    return match


def _scan(rows: np.ndarray, max_distance: int) -> tuple[np.ndarray, int]:
    """The greedy search without an index: each row against every row kept before it (for wide distances)."""
    n = len(rows)
    match = np.full(n, -1, dtype=np.int64)
    kept = np.empty_like(rows)
    kept_at = np.empty(n, dtype=np.int64)
    size = candidates = 0
    for j in range(n):
        if size:
            far = np.bitwise_count(kept[:size] ^ rows[j]).max(axis=1)
            candidates += size
            hits = np.flatnonzero(far <= max_distance)
            if hits.size:
                match[j] = kept_at[hits[0]]
                continue
        kept[size], kept_at[size] = rows[j], j
        size += 1
    return match, candidates


def first_copies(hashes: np.ndarray, max_distance: int, budget: int = 1 << 20) -> Copies:
    """Greedy near-duplicate removal in row order: a row is dropped when a row kept before it is within ``max_distance``.

    ``hashes`` is (n, parts) uint64 (or one-dimensional for one part), rows in the order that
    decides which copy survives. The result is the same as comparing each row with every kept
    row before it and taking the earliest within ``max_distance`` on every part.
    """
    rows = _as_rows(hashes)
    n = len(rows)
    match = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return Copies(match, np.zeros(n, dtype=np.int64), 0)
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    head = first[inverse.reshape(-1)]  # each row's first identical row
    reps = np.sort(first)  # distinct hashes, in row order
    distinct = rows[reps]
    if index_pays(max_distance, rows.shape[1]):
        earlier, later, candidates = near_pairs(distinct, max_distance, budget)
        rep_match = _greedy(len(reps), earlier, later)
    else:
        rep_match, candidates = _scan(distinct, max_distance)
    rep_match = np.where(rep_match >= 0, reps[np.maximum(rep_match, 0)], -1)
    match[reps] = rep_match
    copies = np.flatnonzero(head != np.arange(n))
    # an identical later row: its first copy if that was kept, else whatever its first copy matched
    match[copies] = np.where(match[head[copies]] >= 0, match[head[copies]], head[copies])
    dropped = np.flatnonzero(match >= 0)
    distance = np.zeros(n, dtype=np.int64)
    distance[dropped] = row_distance(rows, dropped, match[dropped])
    return Copies(match, distance, candidates)
