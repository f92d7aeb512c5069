"""Scale: the ``copy`` generator over a Parquet source of 1k, 10k and 100k small images, on Ray.

What must hold as a build grows: the cost per item stays flat (within 15% is the aim), and
neither the driver nor any worker holds more memory for more items (everything streams by
shard; the driver sees only commit markers). Memory is sampled every 0.2 s with psutil:
the driver's RSS, and the RSS of every Ray worker process this script's Ray started (the
driver's descendants named ``ray::...``, so other Ray instances on the machine are not
counted). RSS includes pages of Ray's shared-memory object store that a worker touched.

    python benchmarks/scale.py [--sizes 1000,10000,100000] [--cpus 2] [--shard-size 256]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from crispedit.core.images import encode_image
from crispedit.engine import build
from crispedit.recipe import load_plan

RECIPE = """\
name: scale
output: {{dir: out, shard_size: {shard_size}, png_compression: 1}}
execution: {{num_cpus: {cpus}}}
source: {{kind: parquet, files: [{folder}], caption_column: caption, max_side: null, size_multiple: 1}}
stages:
  - kind: copy
"""

ROWS_PER_FILE = 10_000


def write_source(folder: Path, count: int, seed: int = 0) -> int:
    """``count`` crops of scikit-image photographs, 32-64 px a side, as HF Image structs in Parquet files."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for first in range(0, count, ROWS_PER_FILE):
        n = min(ROWS_PER_FILE, count - first)
        images, captions = [], []
        for i in range(first, first + n):
            photo = photos[i % len(photos)]
            h, w = rng.integers(32, 65, size=2)
            y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
            images.append({"bytes": encode_image(np.ascontiguousarray(photo[y : y + h, x : x + w]), "png", png_compression=1), "path": None})
            captions.append(f"crop {i}")
        table = pa.table({"image": images, "caption": captions})
        pq.write_table(table, folder / f"part-{first // ROWS_PER_FILE:05d}.parquet", row_group_size=256)
        written += n
    return written


class PeakMemory:
    """Samples the driver's RSS and its Ray workers' RSS in a thread; keeps the peaks."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.driver = psutil.Process()
        self.driver_peak = 0
        self.worker_peak = 0  # the largest single worker
        self.workers_total_peak = 0  # all workers together
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        self.driver_peak = max(self.driver_peak, self.driver.memory_info().rss)
        sizes = []
        for child in self.driver.children(recursive=True):
            try:
                if child.name().startswith("ray::") or any(part.startswith("ray::") for part in child.cmdline()[:1]):
                    sizes.append(child.memory_info().rss)
            except psutil.Error:
                continue
        if sizes:
            self.worker_peak = max(self.worker_peak, max(sizes))
            self.workers_total_peak = max(self.workers_total_peak, sum(sizes))


def run(size: int, work: Path, shard_size: int, cpus: int) -> dict[str, float]:
    folder = work / f"source-{size}"
    # Written by a child process, so the images made here never sit in the driver's heap.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(write_source, folder, size).result()
    recipe = work / f"scale-{size}.yaml"
    recipe.write_text(RECIPE.format(folder=folder, shard_size=shard_size, cpus=cpus))
    plan = load_plan(recipe, out=work / f"out-{size}")
    gc.collect()
    with PeakMemory() as memory:
        driver_start = memory.driver.memory_info().rss
        start = time.perf_counter()
        result = build(plan, runner="ray", progress=False, num_cpus=cpus)
        seconds = time.perf_counter() - start
    assert result.summary["rows"] == size, result.summary
    return {
        "items": size,
        "seconds": seconds,
        "ms_per_item": 1000 * seconds / size,
        "driver_start_mib": driver_start / 2**20,
        "driver_mib": memory.driver_peak / 2**20,
        "worker_mib": memory.worker_peak / 2**20,
        "workers_mib": memory.workers_total_peak / 2**20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="item counts, comma-separated")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            run(min(sizes), work / "warm", args.shard_size, args.cpus)  # start Ray Data's workers once
            rows = [run(size, work, args.shard_size, args.cpus) for size in sizes]
    finally:
        ray.shutdown()
    base = rows[0]["ms_per_item"]
    print(f"\ncopy generator, Parquet source of 32-64 px PNGs, shards of {args.shard_size}, Ray with {args.cpus} CPUs")
    print("marginal: extra seconds over the previous size, per extra item (the build's fixed start-up cancels out)\n")
    print(
        "| items | seconds | ms/item | vs smallest | marginal ms/item | driver RSS MiB at start -> peak "
        "| largest worker peak RSS MiB | all workers peak RSS MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    previous = None
    for row in rows:
        marginal = "" if previous is None else f"{1000 * (row['seconds'] - previous['seconds']) / (row['items'] - previous['items']):.3f}"
        print(
            f"| {row['items']} | {row['seconds']:.1f} | {row['ms_per_item']:.3f} | {row['ms_per_item'] / base:.2f} | {marginal} "
            f"| {row['driver_start_mib']:.0f} -> {row['driver_mib']:.0f} | {row['worker_mib']:.0f} | {row['workers_mib']:.0f} |"
        )
        previous = row
    return 0


if __name__ == "__main__":
    sys.exit(main())
