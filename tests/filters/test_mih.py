"""The band index (crispedit.filters.mih) against all-pairs brute force written here, on random hashes with planted copies."""

from __future__ import annotations

import numpy as np
import pytest

from crispedit.filters.mih import band_layout, first_copies, index_pays, near_pairs


def flipped(rng: np.random.Generator, value: int, bits: int) -> int:
    for bit in rng.choice(64, size=min(bits, 64), replace=False).tolist():
        value ^= 1 << bit
    return value


def planted(seed: int, originals: int, max_distance: int, parts: int = 2) -> list[tuple[int, ...]]:
    """Random rows, and copies of some at every distance 0..d+1 on each part, shuffled."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, ...]] = []
    for _ in range(originals):
        row = tuple(int(v) for v in rng.integers(0, 1 << 64, size=parts, dtype=np.uint64))
        rows.append(row)
        for _ in range(int(rng.integers(0, 3))):
            rows.append(tuple(flipped(rng, v, int(rng.integers(0, max_distance + 2))) for v in row))
    return [rows[i] for i in rng.permutation(len(rows)).tolist()]


def distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return max((x ^ y).bit_count() for x, y in zip(a, b, strict=True))


def all_pairs(rows: list[tuple[int, ...]], max_distance: int) -> set[tuple[int, int]]:
    return {(i, j) for j in range(len(rows)) for i in range(j) if distance(rows[i], rows[j]) <= max_distance}


def greedy(rows: list[tuple[int, ...]], max_distance: int) -> list[int]:
    """Each row against every row kept before it: the earliest within d, or -1 (kept)."""
    kept: list[int] = []
    match = []
    for j, row in enumerate(rows):
        hit = next((i for i in kept if distance(rows[i], row) <= max_distance), -1)
        match.append(hit)
        if hit < 0:
            kept.append(j)
    return match


def as_array(rows: list[tuple[int, ...]], parts: int = 2) -> np.ndarray:
    return np.array(rows, dtype=np.uint64).reshape(len(rows), parts)


@pytest.mark.parametrize("max_distance", [0, 1, 3, 4, 6, 9])
def test_near_pairs_are_exactly_the_brute_force_pairs(max_distance: int) -> None:
    rows = planted(max_distance, 120, max_distance)
    earlier, later, candidates = near_pairs(as_array(rows), max_distance)
    expected = all_pairs(rows, max_distance)
    assert set(zip(earlier.tolist(), later.tolist(), strict=True)) == expected
    assert len(earlier) == len(expected)  # no pair twice
    assert list(zip(later.tolist(), earlier.tolist(), strict=True)) == sorted((j, i) for i, j in expected)
    assert candidates >= len(expected)
    # the planted copies at d + 1 bits are there and are not pairs: the cut is exact
    assert any(distance(a, b) == max_distance + 1 for n, a in enumerate(rows) for b in rows[:n])


@pytest.mark.parametrize("max_distance", [0, 2, 4, 8, 12, 64])
def test_the_first_copy_matches_the_greedy_scan(max_distance: int) -> None:
    rows = planted(100 + max_distance, 90, max_distance)
    found = first_copies(as_array(rows), max_distance)
    expected = greedy(rows, max_distance)
    assert found.match.tolist() == expected
    assert found.distance.tolist() == [distance(rows[m], r) if m >= 0 else 0 for r, m in zip(rows, expected, strict=True)]
    assert sum(m >= 0 for m in expected) > 0


def test_identical_rows_follow_their_first_copy_and_one_part_hashes_work() -> None:
    rng = np.random.default_rng(7)
    base = [int(v) for v in rng.integers(0, 1 << 64, size=30, dtype=np.uint64)]
    rows = [(v,) for v in base] + [(flipped(rng, v, 2),) for v in base[:10]] + [(v,) for v in base[:15]] * 3
    rows = [rows[i] for i in rng.permutation(len(rows)).tolist()]
    for d in (0, 2, 3, 7, 8):  # 8: past where one 64-bit hash's bands pay, the scan
        found = first_copies(np.array([r[0] for r in rows], dtype=np.uint64), d)
        assert found.match.tolist() == greedy(rows, d), d


def test_chunked_candidates_give_the_same_pairs() -> None:
    rows = as_array(planted(5, 80, 4))
    whole = near_pairs(rows, 4)
    for budget in (1, 7, 100):
        chunked = near_pairs(rows, 4, budget=budget)
        assert [a.tolist() for a in chunked[:2]] == [a.tolist() for a in whole[:2]] and chunked[2] == whole[2]


def test_edge_cases() -> None:
    empty = np.zeros((0, 2), dtype=np.uint64)
    assert first_copies(empty, 4).match.tolist() == [] and near_pairs(empty, 4)[0].tolist() == []
    one = np.array([[1, 2]], dtype=np.uint64)
    assert first_copies(one, 4).match.tolist() == [-1] and near_pairs(one, 4)[0].tolist() == []
    far = np.array([[0, 0], [2**64 - 1, 2**64 - 1]], dtype=np.uint64)
    assert first_copies(far, 63).match.tolist() == [-1, -1]
    assert first_copies(far, 64).match.tolist() == [-1, 0]  # 64 bits is every pair
    assert first_copies(far, 200).distance.tolist() == [0, 64]
    with pytest.raises(ValueError, match="max_distance \\+ 1 <= 64"):
        near_pairs(far, 64)  # more bands than bits: no pigeonhole
    assert not index_pays(64, 2) and index_pays(4, 2)
    assert [w for _, w in band_layout(5)] == [13, 13, 13, 13, 12] and sum(w for _, w in band_layout(64)) == 64
    with pytest.raises(ValueError, match="shape"):
        first_copies(np.zeros((2, 2, 2), dtype=np.uint64), 1)
