"""``crispedit dedupe OUT --to NEW``: near-duplicate pairs of a whole build, across shards, moved to the rejects.

A post-build pass because a stage sees one shard's batch and a duplicate may sit in another
shard. The hashes are crispedit.filters.phash's, the search crispedit.filters.mih's, the rewrite
crispedit.ops.rewrite's (shared with ``refilter``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crispedit.filters.phash import build_hashes, duplicates_of
from crispedit.ops.rewrite import Verdict, check_target, rewrite_build


def dedupe_build(src: str | Path, dst: str | Path, max_distance: int = 4, overwrite: bool = False) -> dict[str, Any]:
    """Write ``dst``: ``src`` with near-duplicate pairs moved to the rejects (stage ``dedupe``).

    A post-build pass because a stage sees one shard's batch and a duplicate may sit in
    another shard. It reads the committed data rows' hashes (provenance, or the image
    bytes), picks drops with :func:`duplicates_of` (a band index, not all pairs), and writes
    through the same shard writer and commit protocol as ``refilter``: images copied byte
    for byte, rows in build order, the same bytes on every run. Both passes go one shard at
    a time: the hash pass reads only the id, lineage and provenance columns, the rewrite one
    shard's data and rejects; the whole build is held only as hash arrays and ids.
    """
    check_target(src, dst, "dedupe")  # before hashing the whole build
    dropped = duplicates_of(build_hashes(src), max_distance)

    def verdict(row: dict[str, Any]) -> Verdict | None:
        if row["reason"] is not None or row["id"] not in dropped:
            return None
        copy_of, distance = dropped[row["id"]]
        return Verdict("dedupe", f"duplicate: within {distance} bits of row {copy_of} (pHash of source and target)")

    note = {"dedupe": {"max_distance": max_distance, "dropped": len(dropped)}}
    report = rewrite_build(src, dst, verdict, overwrite=overwrite, note=note, kind="dedupe")
    report["dropped"] = len(dropped)
    return report
