"""Trainer data loading: samples per second of crispedit.mgt's loader against a bare-loop floor.

Floor: the irreducible work per training pair in one process, with the encoded images already
in memory: PIL decode of source and target, the shared crop at the training resolution, and
float tensors in [0, 1] ready for the VQ tokenizer. The loader does that plus reading the
Parquet row groups, crispedit.core.images' checked decode, batching, and handing uint8 batches
from worker processes to the main one (which makes them floats). Ratio per worker =
loader / (workers x floor); ratio per core = loader / (min(workers, cores) x floor).

Timing starts after the first batch, so worker start-up is left out (it is reported apart).
Runs alternate floor and loader, and the best of `--repeats` is kept, so load from other
processes on a shared machine hits both alike.

    python benchmarks/trainer_data.py                       # 256 pairs of 768x512 JPEG, 512 px crops
    python benchmarks/trainer_data.py --workers 1 2 4 8 --pairs 1024
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crispedit.mgt.data import crop_pair, to_unit  # noqa: E402
from crispedit.mgt.loader import PairLoader  # noqa: E402


def _photo(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth gradients, shapes and noise: compresses like a photo, not like a flat fill."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    img = rng.uniform(40, 200, 3) + 60 * np.stack([x, y, 1 - x], axis=2)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - w // 4), rng.integers(0, h - h // 4)
        img[y0:y0 + h // 4, x0:x0 + w // 4] = rng.uniform(0, 255, 3)
    return (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_dataset(root: Path, pairs: int, size: tuple[int, int], row_group: int) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(0)
    images = [(_jpeg(a), _jpeg(255 - a)) for a in (_photo(rng, *size) for _ in range(pairs))]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "source_image": pa.array([{"bytes": s, "path": None} for s, _ in images], type=struct),
        "target_image": pa.array([{"bytes": t, "path": None} for _, t in images], type=struct),
        "instruction": ["invert the colors"] * pairs,
        "task": ["color"] * pairs,
    })
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "data" / "train-00000.parquet", row_group_size=row_group)
    return images


def floor_rate(images: list[tuple[bytes, bytes]], resolution: int, batch_size: int) -> float:
    """Samples/s of decode + crop + float tensors in a bare single-process loop."""
    started, done = time.perf_counter(), 0
    rng = np.random.default_rng(0)
    batch = []
    for src, tgt in images:
        s = Image.open(io.BytesIO(src)).convert("RGB")
        t = Image.open(io.BytesIO(tgt)).convert("RGB")
        a, b, _ = crop_pair(s, t, resolution, rng)
        batch.append((a, b))
        if len(batch) == batch_size:
            to_unit(torch.stack([x for x, _ in batch])), to_unit(torch.stack([y for _, y in batch]))
            done += len(batch)
            batch = []
    return done / (time.perf_counter() - started)


def loader_rate(root: Path, resolution: int, batch_size: int, workers: int, samples: int) -> tuple[float, float]:
    """(steady samples/s after the first batch, seconds to the first batch)."""
    loader = PairLoader([root], None, resolution, seed=0, batch_size=batch_size, streams=4, mix=2,
                        num_workers=workers)
    started = time.perf_counter()
    gen = loader.batches(0)
    first = next(gen)
    to_unit(first.source), to_unit(first.target)
    warm = time.perf_counter()
    done = 0
    while done < samples:
        batch = next(gen)
        to_unit(batch.source), to_unit(batch.target)
        done += len(batch)
    rate = done / (time.perf_counter() - warm)
    gen.close()
    return rate, warm - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--size", default="768x512", help="WxH of the stored JPEGs")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--row-group", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    w, h = (int(v) for v in args.size.split("x"))
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = write_dataset(root, args.pairs, (w, h), args.row_group)
        # steady-state samples per loader run: what is left after the first batch of each worker
        samples = args.pairs - args.batch_size * max(args.workers)
        floors, rates, startup = [], {n: [] for n in args.workers}, {n: [] for n in args.workers}
        for _ in range(args.repeats):
            floors.append(floor_rate(images, args.resolution, args.batch_size))
            for n in args.workers:
                rate, start = loader_rate(root, args.resolution, args.batch_size, n, samples)
                rates[n].append(rate)
                startup[n].append(start)
    floor = max(floors)
    print(f"{args.pairs} pairs of {w}x{h} JPEG, {args.resolution} px crops, batch {args.batch_size}, "
          f"row groups of {args.row_group}, {cores} CPU cores, best of {args.repeats}")
    print(f"floor (one process, bytes in memory): {floor:.1f} samples/s")
    print("| workers | samples/s | ratio per worker | ratio per core | first batch s |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.workers:
        best = max(rates[n])
        print(f"| {n} | {best:.1f} | {best / (n * floor):.2f} | {best / (min(n, cores) * floor):.2f} | "
              f"{min(startup[n]):.2f} |")


if __name__ == "__main__":
    main()
