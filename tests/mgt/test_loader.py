"""The loader: the order is a function of (seed, batch index); workers split whole row groups;
every row read is used; ratios hold per epoch; a resume continues the same stream."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from crispedit.mgt.epochs import EpochPlan
from crispedit.mgt.loader import PairLoader
from crispedit.mgt.shard_index import DatasetIndex
from tests.mgt.conftest import write_crispedit_shard


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """32 rows in 8 row groups of 4: with 4 streams, each stream holds 2 row groups per epoch."""
    return write_crispedit_shard(tmp_path_factory.mktemp("loader"), 32, row_group_size=4, seed=1)


def _take(loader: PairLoader, n: int, start: int = 0) -> list:
    gen = loader.batches(start)
    try:
        return [next(gen) for _ in range(n)]
    finally:
        gen.close()


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_workers_give_the_same_batches_and_split_row_groups(shards):
    ref = _take(PairLoader([shards], None, 16, seed=5, batch_size=4, num_workers=0), 16)
    # one epoch = 32 rows = the first 8 batches: every row exactly once
    first_epoch = [r for b in ref[:8] for r in b.rows]
    assert len(first_epoch) == 32 and len(set(first_epoch)) == 32
    assert {b.epoch for b in ref[:8]} == {0} and {b.epoch for b in ref[8:]} == {1}
    for workers in (1, 2, 4):
        got = _take(PairLoader([shards], None, 16, seed=5, batch_size=4, num_workers=workers), 16)
        assert [b.index for b in got] == list(range(16))
        assert [b.rows for b in got] == [b.rows for b in ref], workers  # same samples, same order
        for a, b in zip(got, ref):
            assert torch.equal(a.source, b.source) and torch.equal(a.target, b.target)
            assert a.instructions == b.instructions and torch.equal(a.micro_conds, b.micro_conds)
        assert collections.Counter(r for b in got for r in b.rows) == collections.Counter(r for b in ref for r in b.rows)
        # within an epoch, no row group (hence no row) is read by two workers
        owner: dict[tuple[int, int, int], set[int]] = collections.defaultdict(set)
        for b in got:
            for d, g, _ in b.rows:
                owner[(b.epoch, d, g)].add(b.worker)
        assert all(len(w) == 1 for w in owner.values()), owner
        assert {b.worker for b in got} == set(range(workers))


def test_resume_mid_epoch_continues_the_stream(shards):
    loader = PairLoader([shards], None, 16, seed=5, batch_size=4, num_workers=2)
    straight = _take(loader, 12)
    resumed = _take(PairLoader([shards], None, 16, seed=5, batch_size=4, num_workers=2), 7, start=5)
    assert [b.index for b in resumed] == list(range(5, 12))
    assert [b.rows for b in resumed] == [b.rows for b in straight[5:]]
    assert all(torch.equal(a.source, b.source) for a, b in zip(resumed, straight[5:]))
    assert [b.positions[0] for b in resumed] == [20, 24, 28, 32, 36, 40, 44]


def test_every_row_read_is_used(shards, monkeypatch):
    """One epoch reads each row group once (the first loader read a 64-row group per sample)."""
    reads = collections.Counter()
    original = DatasetIndex.read

    def counting(self, group):
        reads[group] += 1
        return original(self, group)

    monkeypatch.setattr(DatasetIndex, "read", counting)
    _take(PairLoader([shards], None, 16, seed=5, batch_size=4, num_workers=0), 8)
    assert sorted(reads) == list(range(8)) and set(reads.values()) == {1}


def test_ratios_hold_in_every_epoch():
    sizes = [np.full(5, 4), np.full(10, 3)]  # 20 and 30 rows
    plan = EpochPlan(sizes, [3.0, 1.0], seed=7, streams=4, mix=2)
    assert plan.per_epoch == [38, 12]  # 50 rows per epoch split 3:1
    seen = {0: [], 1: []}
    for epoch in range(3):
        counts = collections.Counter()
        for stream in range(4):
            for group in plan.mix_groups(epoch, stream):
                for ref in plan.mixed_refs(epoch, stream, 0, group):
                    counts[ref.dataset] += 1
                    seen[ref.dataset].append((ref.group, ref.row))
        assert counts == {0: 38, 1: 12}
    # the small dataset repeats (38 > 20 rows): epoch 0 has one whole pass plus 18 rows of the next
    first_epoch = collections.Counter(seen[0][:38])
    assert len(first_epoch) == 20 and sorted(collections.Counter(first_epoch.values()).items()) == [(1, 2), (2, 18)]
    # the large one continues across epochs: 36 rows over 3 epochs cover 30 distinct rows
    assert len(set(seen[1])) == 30


def test_a_corrupt_image_is_replaced_by_a_row_of_the_same_group(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = write_crispedit_shard(tmp_path / "ds", 8, row_group_size=4)
    path = root / "data" / "train-00000.parquet"
    table = pq.read_table(path)
    sources = table.column("source_image").to_pylist()
    sources[2] = {"bytes": b"\x89PNG\r\n\x1a\n broken", "path": None}
    table = table.set_column(table.schema.get_field_index("source_image"), "source_image",
                             pa.array(sources, type=table.schema.field("source_image").type))
    pq.write_table(table, path, row_group_size=4)
    batches = _take(PairLoader([root], None, 16, seed=0, batch_size=4, streams=2, num_workers=0), 2)
    assert all(len(b) == 4 for b in batches)
    again = _take(PairLoader([root], None, 16, seed=0, batch_size=4, streams=2, num_workers=0), 2)
    assert [b.rows for b in batches] == [b.rows for b in again]


def test_workers_must_divide_streams(shards):
    with pytest.raises(ValueError, match="divide"):
        PairLoader([shards], None, 16, seed=0, batch_size=4, streams=4, num_workers=3)


def test_every_stream_gets_rows_when_an_epoch_has_fewer_pieces_than_streams():
    """One row group, four streams: the piece of each epoch goes to the next stream in turn,
    so no stream waits forever (a stream that never gets rows would hang its worker)."""
    plan = EpochPlan([np.array([6])], [1.0], seed=0, streams=4, mix=2)
    owners = [next(s for s in range(4) if plan.epoch(e)[s]) for e in range(8)]
    assert owners == [0, 1, 2, 3, 0, 1, 2, 3]
