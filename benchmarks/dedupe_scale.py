"""Whole-build near-duplicate search at 10k, 100k and 1M pairs: the band index against the all-pairs scan it replaced.

Synthetic pair hashes at the real width (two 64-bit pHashes per row, source and target),
uniformly random, with planted copies: a share of the rows repeat an earlier row with 0..d
bits flipped in each hash (each must be dropped: the recall), and as many with d + 1 bits
flipped (each must stay: a cut in the wrong place shows as false drops). The search is
``crispedit.filters.mih.first_copies``, what ``crispedit dedupe`` runs after reading the
hashes; the old one is the greedy scan ``near_duplicates`` ran before (every row against
every kept row beyond 3 bits), kept here verbatim as the baseline. Peak memory is
tracemalloc's (numpy's buffers included) over the search alone; the hash input itself is
16 bytes a row on top.

    nice -n 10 python benchmarks/dedupe_scale.py [--sizes 10000,100000,1000000] [--distance 4] [--old-max 100000]

``--builds 1000,4000`` also builds real datasets of that many pairs (``copy`` + ``dedupe``
stages, local runner, scale.py's photo crops, 250 items a shard) and runs ``crispedit
dedupe`` on each in a fresh process (imports done first): seconds, and the peak RSS during
the pass against the RSS after imports; the difference should follow the shard size, not
the build's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from crispedit.filters.mih import first_copies


def synthetic(rows: int, max_distance: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes (rows, 2), copies that must go, copies at d + 1 that must stay): row indices, each copy after its original."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, size=(rows, 2), dtype=np.uint64, endpoint=True)
    planted = int(rows * share)
    slots = rng.choice(np.arange(1, rows), size=2 * planted, replace=False)
    pool = np.setdiff1d(np.arange(rows), slots)  # originals are never copies themselves; row 0 is one
    near, far = slots[:planted], slots[planted:]
    for copies, flips in ((near, rng.integers(0, max_distance + 1, size=(planted, 2))), (far, np.full((planted, 2), max_distance + 1))):
        originals = pool[(rng.random(copies.size) * np.searchsorted(pool, copies)).astype(np.int64)]  # an earlier one
        hashes[copies] = hashes[originals] ^ _masks(rng, flips)
    return hashes, near, far


def _masks(rng: np.random.Generator, flips: np.ndarray) -> np.ndarray:
    """A uint64 mask with ``flips[i, p]`` random bits set, for each row and part."""
    order = np.argsort(rng.random((*flips.shape, 64)), axis=2)  # a random permutation of the bits per cell
    chosen = order < flips[..., None]
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    return (chosen.astype(np.uint64) * weights).sum(axis=2, dtype=np.uint64)


def old_scan(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, int]:
    """The search ``near_duplicates`` ran before the band index (its unbanded path, taken beyond 3 bits), as it was.

    Returns each row's match (-1: kept) and how many distances it computed.
    """
    kept_src: list[int] = []
    kept_tgt: list[int] = []
    kept_at: list[int] = []
    match = np.full(len(hashes), -1, dtype=np.int64)
    compared = 0
    for row, (source, target) in enumerate(hashes.tolist()):
        if kept_at:
            both = np.maximum(np.bitwise_count(np.array(kept_src, dtype=np.uint64) ^ np.uint64(source)),
                              np.bitwise_count(np.array(kept_tgt, dtype=np.uint64) ^ np.uint64(target)))
            compared += len(kept_at)
            hits = np.nonzero(both <= max_distance)[0]
            if hits.size:
                match[row] = kept_at[int(hits[0])]
                continue
        kept_at.append(row)
        kept_src.append(source)
        kept_tgt.append(target)
    return match, compared


def measured(search, *args) -> tuple[object, float, float]:  # noqa: ANN001 - a benchmark helper
    tracemalloc.start()
    tracemalloc.reset_peak()
    began = time.perf_counter()
    result = search(*args)
    seconds = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


BUILD = """\
name: dedupe-scale
output: {{dir: out, shard_size: {shard_size}, png_compression: 1}}
execution: {{runner: local}}
source: {{kind: parquet, files: [{folder}], caption_column: caption, max_side: null, size_multiple: 1}}
stages:
  - kind: copy
  - kind: dedupe
"""


def _dedupe_in_child(out: str, to: str, max_distance: int, answer: multiprocessing.Queue) -> None:
    """``crispedit dedupe`` in a fresh process, imports done first: hash pass s, dedupe s, RSS before and peak RSS (MiB).

    RSS is sampled every 10 ms by a thread (psutil), so the peak is the pass's, not the imports'.
    """
    import threading

    import datasets  # noqa: F401 - imported by the shard writer; its import is not the pass's cost
    import matplotlib.pyplot  # noqa: F401 - the histograms'
    import psutil

    from crispedit.filters.phash import build_hashes
    from crispedit.ops.dedupe import dedupe_build
    from crispedit.ops.histograms import write_histograms  # noqa: F401

    me = psutil.Process()
    before = me.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    build_hashes(out)
    hashed = time.perf_counter() - began
    began = time.perf_counter()
    report = dedupe_build(out, to, max_distance)
    seconds = time.perf_counter() - began
    stop.set()
    sampler.join()
    answer.put((hashed, seconds, before / 2**20, peak[0] / 2**20, report["dropped"]))


def real_builds(sizes: list[int], max_distance: int, shard_size: int = 250) -> None:
    from scale import write_source  # benchmarks/ is the script's folder

    from crispedit.engine import build
    from crispedit.recipe import load_plan

    print(f"\nReal builds (copy + dedupe stages, {shard_size} items a shard), `crispedit dedupe` in a fresh process:\n")
    print("| pairs | shards | largest shard MiB | build s | hash pass s | dedupe s (hash pass, search, rewrite, plots) | RSS after imports MiB | peak RSS during MiB | dropped |")
    print("|---|---|---|---|---|---|---|---|---|")
    context = multiprocessing.get_context("spawn")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "source"
            write_source(folder, size)
            recipe = Path(tmp) / "recipe.yaml"
            recipe.write_text(BUILD.format(shard_size=shard_size, folder=folder))
            began = time.perf_counter()
            build(load_plan(recipe, out=Path(tmp) / "out"), runner="local", progress=False)
            built = time.perf_counter() - began
            files = sorted((Path(tmp) / "out" / "data").glob("*.parquet"))
            answer = context.Queue()
            child = context.Process(target=_dedupe_in_child, args=(str(Path(tmp) / "out"), str(Path(tmp) / "deduped"), max_distance, answer))
            child.start()
            hashed, seconds, start, peak, dropped = answer.get()
            child.join()
            largest = max(f.stat().st_size for f in files) / 2**20
            print(f"| {size:,} | {len(files)} | {largest:.1f} | {built:.0f} | {hashed:.2f} | {seconds:.1f} | {start:.0f} | {peak:.0f} | {dropped} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--distance", type=int, default=4)
    parser.add_argument("--share", type=float, default=0.05, help="rows planted as copies within d (and as many at d + 1)")
    parser.add_argument("--old-max", type=int, default=100_000, help="largest size the old scan runs at")
    parser.add_argument("--builds", default="", help="sizes of real builds to dedupe (e.g. 1000,4000); none by default")
    args = parser.parse_args()
    d = args.distance
    print(f"max distance {d} bits on both hashes; {args.share:.0%} of rows planted within d, {args.share:.0%} at d + 1\n")
    print("| search | rows | seconds | peak MiB | recall | false drops | candidates / row | same drops as old |")
    print("|---|---|---|---|---|---|---|---|")
    old_at: tuple[int, float] | None = None  # (rows, seconds) of the last old run: its quadratic estimate
    for rows in (int(s) for s in args.sizes.split(",")):
        hashes, near, _far = synthetic(rows, d, args.share, seed=rows)
        found, seconds, peak = measured(first_copies, hashes, d)
        dropped = found.match >= 0
        same = "-"
        estimate = old_at[1] * (rows / old_at[0]) ** 2 if old_at is not None else None
        if rows <= args.old_max and (estimate is None or estimate < 180):
            (old, compared), old_seconds, old_peak = measured(old_scan, hashes, d)
            old_at = (rows, old_seconds)
            same = "yes" if np.array_equal(old, found.match) else "NO"
            print(f"| old all-kept scan | {rows:,} | {old_seconds:.1f} | {old_peak:.0f} | {_recall(old >= 0, near):.3f} | "
                  f"{_false(old >= 0, near)} | {compared / rows:,.0f} | |")
        elif estimate is not None:
            print(f"| old all-kept scan | {rows:,} | ~{estimate:,.0f} (quadratic estimate, not run) | | | | | |")
        print(f"| band index | {rows:,} | {seconds:.1f} | {peak:.0f} | {_recall(dropped, near):.3f} | {_false(dropped, near)} | "
              f"{found.candidates / rows:.2f} | {same} |", flush=True)
    if args.builds:
        real_builds([int(s) for s in args.builds.split(",")], d)


def _recall(dropped: np.ndarray, near: np.ndarray) -> float:
    return float(dropped[near].mean()) if near.size else 1.0


def _false(dropped: np.ndarray, near: np.ndarray) -> int:
    """Drops that are not planted copies within d (copies at d + 1 included): 0 when the cut is exact."""
    return int(dropped.sum() - dropped[near].sum())


if __name__ == "__main__":
    main()
