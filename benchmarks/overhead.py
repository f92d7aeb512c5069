"""Engine overhead: a build whose generator copies its input, against the floor, in one run.

The floor does only the unavoidable work for the same images: decode each source file,
PNG-encode the source and the target, and write the Parquet shards directly. crispedit
does that plus ids, provenance, stats, atomic commits and (with Ray) serialisation between
stages. The ratio is crispedit's throughput over the floor's; the target is >= 0.8.

    python benchmarks/overhead.py [--images 192] [--side 512] [--shard-size 32]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from crispedit.engine import build
from crispedit.images import encode_image
from crispedit.recipe import load_plan
from crispedit.shards import plan_shards, record_features

RECIPE = """\
name: overhead
output: {{dir: out, shard_size: {shard_size}, png_compression: 3}}
execution: {{num_cpus: {cpus}}}
source: {{kind: folder, folder: {folder}, max_side: null, size_multiple: 1}}
stages:
  - kind: copy
"""


def make_photos(folder: Path, count: int, side: int) -> list[Path]:
    """JPEG crops of scikit-image's photographs: real image statistics, no download."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.hubble_deep_field()]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        crop = min(h, w)
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        image = Image.fromarray(photo[y : y + crop, x : x + crop]).resize((side, side), Image.Resampling.BICUBIC)
        path = folder / f"photo_{i:05d}.jpg"
        image.save(path, quality=92)
        paths.append(path)
    return paths


def floor(paths: list[Path], out: Path, shard_size: int) -> float:
    schema = record_features([]).arrow_schema
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for shard in plan_shards(len(paths), shard_size):
        sources, targets = [], []
        for path in paths[shard.start : shard.end]:
            pixels = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
            sources.append({"bytes": encode_image(pixels, "png", png_compression=3), "path": None})
            targets.append({"bytes": encode_image(pixels.copy(), "png", png_compression=3), "path": None})
        n = len(sources)
        columns = {name: [None] * n for name in schema.names}
        columns["source_image"], columns["target_image"] = sources, targets
        columns["edit_objects"] = [[] for _ in range(n)]
        pq.write_table(pa.table(columns, schema=schema), out / f"{shard.name}.parquet", compression="zstd", row_group_size=64)
    return time.perf_counter() - start


def crispedit_build(folder: Path, work: Path, shard_size: int, runner: str, cpus: int) -> float:
    recipe = work / f"overhead-{runner}.yaml"
    recipe.write_text(RECIPE.format(folder=folder, shard_size=shard_size, cpus=cpus))
    plan = load_plan(recipe, out=work / f"out-{runner}")
    start = time.perf_counter()
    result = build(plan, runner=runner, progress=False, num_cpus=cpus)
    seconds = time.perf_counter() - start
    assert result.summary["rows"] == len(list(folder.iterdir())), result.summary
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--runners", default="local,ray")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = make_photos(work / "photos", args.images, args.side)
        floor(paths[: args.shard_size], work / "warm", args.shard_size)  # warm the codecs and caches
        timings = {"floor (decode + 2 PNG encodes + Parquet)": floor(paths, work / "floor", args.shard_size)}
        for runner in args.runners.split(","):
            if runner == "ray":
                import ray

                ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
            try:
                timings[f"crispedit build, copy generator ({runner} runner)"] = crispedit_build(work / "photos", work, args.shard_size, runner, args.cpus)
            finally:
                if runner == "ray":
                    ray.shutdown()
    base = args.images / next(iter(timings.values()))
    print(f"\n{args.images} images, {args.side}x{args.side}, shards of {args.shard_size}, {args.cpus} CPUs (Ray), floor single-process\n")
    print(f"| {'method':<52} | {'seconds':>8} | {'pairs/s':>8} | {'ratio to floor':>14} |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 10}|{'-' * 16}|")
    for name, seconds in timings.items():
        rate = args.images / seconds
        print(f"| {name:<52} | {seconds:8.2f} | {rate:8.1f} | {rate / base:14.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
