"""Training batches decoded in torch DataLoader worker processes, in an order fixed by the seed.

The order is epochs.py's: global batch g is a pure function of (seed, g). Worker w of W
produces batches g = start + w, start + w + W, ...; since W divides the number of streams,
those batches come from the streams s = (start + w) mod W (mod W), so each worker reads whole
row groups that no other worker reads. The DataLoader hands batches back round-robin, i.e. in
g order; `PairLoader.batches` checks every index, so an ordering surprise is an error, not a
silently different run.

Every row read is used: a worker reads the row groups of one mix group (epochs.py) once,
keeps them while their rows are consumed, then drops them. This replaces the first loader,
which read a whole 64-row row group to return a single row.

Batches cross the process boundary as uint8 pixels; `data.to_unit` turns them into floats
on the training device.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from crispedit.core.images import DEFAULT_MAX_PIXELS, ImageRejected

from .data import PairBatch, crop_pair, decode_rgb
from .epochs import EpochPlan, SampleRef
from .shard_index import DatasetIndex

log = logging.getLogger(__name__)


class _StreamCursor:
    """Consumes one stream sample by sample, holding the row groups of its current mix group."""

    def __init__(self, source: PairStreams, stream: int, start: int) -> None:
        self.source = source
        self.walk = source.plan.walk(stream, start)
        self.refs: list[SampleRef] = []
        self.full: list[SampleRef] = []  # the whole mix group, for substitutes
        self.cut = 0
        self.pos = 0
        self.tables: dict[tuple[int, int], pa.Table] = {}

    def _advance(self) -> None:
        group, refs, cut = next(self.walk)
        self.tables = {(p.dataset, p.group): self.source.indexes[p.dataset].read(p.group) for p in group}
        self.full, self.cut, self.pos = refs, cut, cut

    def take(self, n: int, first_position: int) -> list[tuple]:
        out = []
        while len(out) < n:
            if self.pos >= len(self.full):
                self._advance()
            out.append(self._decode(self.pos, first_position + len(out)))
            self.pos += 1
        return out

    def _decode(self, index: int, position: int) -> tuple:
        """The sample at `index` of the mix group; a row whose image cannot be decoded is
        replaced by the next decodable row of the same group (a fixed choice, so a resumed
        run makes the same one), with a warning naming the file and row."""
        n = len(self.full)
        for k in range(n):
            ref = self.full[(index + k) % n]
            try:
                return self.source.load(ref, self.tables[(ref.dataset, ref.group)], position)
            except (ImageRejected, ValueError, OSError) as error:
                g = self.source.indexes[ref.dataset].groups[ref.group]
                log.warning("%s row group %d row %d: %s; using another row of the same mix group",
                            g.file, g.index, ref.row, error)
        raise ValueError(f"no row of a mix group of stream data could be decoded ({n} rows)")


def _stack(tensors: list[torch.Tensor], in_worker: bool) -> torch.Tensor:
    """Stack straight into shared memory in a worker process (as torch's default collate does),
    so handing the batch to the main process copies nothing more."""
    if not in_worker:
        return torch.stack(tensors)
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype).share_memory_()
    return torch.stack(tensors, out=out)


class PairStreams(IterableDataset):
    """The endless batch stream from `start_batch` on; iterate it in-process or in DataLoader workers."""

    def __init__(self, paths: list[str | Path], ratios: list[float] | None, resolution: int, seed: int,
                 batch_size: int, streams: int = 4, mix: int = 2, random_crop: bool = True,
                 start_batch: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__()
        self.indexes = [DatasetIndex(p) for p in paths]
        ratios = ratios or [1.0] * len(self.indexes)
        self.plan = EpochPlan([ix.group_rows for ix in self.indexes], ratios, seed, streams, mix)
        self.resolution = resolution
        self.seed = seed
        self.batch_size = batch_size
        self.random_crop = random_crop
        self.start_batch = start_batch
        self.max_pixels = max_pixels

    def load(self, ref: SampleRef, table: pa.Table, position: int) -> tuple:
        instruction = table.column("instruction")[ref.row].as_py()
        task = table.column("task")[ref.row].as_py() if "task" in table.column_names else None
        source = decode_rgb(table.column("source")[ref.row].as_py(), self.max_pixels)
        target = decode_rgb(table.column("target")[ref.row].as_py(), self.max_pixels)
        rng = np.random.default_rng([self.seed, 2, position]) if self.random_crop else None
        s, t, micro = crop_pair(source, target, self.resolution, rng)
        return s, t, str(instruction or ""), task or None, micro, (ref.dataset, ref.group, ref.row), ref.epoch

    def __iter__(self) -> Iterator[PairBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        streams = self.plan.streams
        if streams % workers:
            raise ValueError(f"num_workers ({workers}) must divide train.loader_streams ({streams})")
        cursors: dict[int, _StreamCursor] = {}
        g = self.start_batch + worker
        b = self.batch_size
        while True:
            s, k = g % streams, g // streams
            if s not in cursors:
                cursors[s] = _StreamCursor(self, s, k * b)
            items = cursors[s].take(b, g * b)
            yield PairBatch(
                source=_stack([i[0] for i in items], info is not None),
                target=_stack([i[1] for i in items], info is not None),
                instructions=[i[2] for i in items],
                tasks=[i[3] for i in items],
                micro_conds=torch.tensor([i[4] for i in items]),
                positions=list(range(g * b, (g + 1) * b)),
                index=g,
                epoch=items[0][6],
                rows=[i[5] for i in items],
                worker=worker,
            )
            g += workers


class PairLoader:
    """Batches of aligned (source, target, instruction, task) from one or more datasets."""

    def __init__(self, paths: list[str | Path], ratios: list[float] | None, resolution: int, seed: int,
                 batch_size: int, streams: int = 4, mix: int = 2, num_workers: int = 0, random_crop: bool = True,
                 prefetch_factor: int = 2) -> None:
        if num_workers < 0 or (num_workers and streams % num_workers):
            raise ValueError(f"num_workers ({num_workers}) must be 0 or divide train.loader_streams ({streams})")
        self.streams = PairStreams(paths, ratios, resolution, seed, batch_size, streams, mix, random_crop)
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor

    @property
    def indexes(self) -> list[DatasetIndex]:
        return self.streams.indexes

    def task_values(self) -> set[str]:
        return set().union(*(ix.task_values() for ix in self.indexes))

    def batches(self, start_batch: int = 0) -> Iterator[PairBatch]:
        """Global batches start_batch, start_batch + 1, ... (endless). Close the generator to stop workers."""
        self.streams.start_batch = start_batch
        if self.num_workers == 0:
            source: Iterator[PairBatch] = iter(self.streams)
        else:
            source = iter(DataLoader(self.streams, batch_size=None, num_workers=self.num_workers,
                                     prefetch_factor=self.prefetch_factor, in_order=True))
        expected = start_batch
        try:
            for batch in source:
                if batch.index != expected:
                    raise RuntimeError(f"loader returned batch {batch.index}, expected {expected}")
                expected += 1
                yield batch
        finally:
            shutdown = getattr(source, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
