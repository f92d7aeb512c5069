"""Engine overhead: a build whose generator copies its input, against the floor, in one run.

The floor does only the unavoidable work for the same images: decode each source file,
PNG-encode the source and the target, and write the Parquet shards directly. crispedit
does that plus ids, provenance, stats, atomic commits and (with Ray) serialisation between
stages. The ratio is crispedit's throughput over the floor's; the target is >= 0.8.

    python benchmarks/overhead.py [--sides 512,1024] [--images 192,64] [--shard-size 32]   # from the repository root
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.stages, the plugin the recipe names

from crispedit.core.images import encode_image  # noqa: E402
from crispedit.core.shards import plan_shards, record_features  # noqa: E402
from crispedit.engine import build  # noqa: E402
from crispedit.recipe import load_plan  # noqa: E402

RECIPE = """\
name: overhead
plugins: [benchmarks.stages]
output: {{dir: out, shard_size: {shard_size}, png_compression: 3}}
execution: {{num_cpus: {cpus}{placement}}}
source: {{kind: folder, folder: {folder}, max_side: null, size_multiple: 1}}
stages:
  - kind: {kind}
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


def crispedit_build(
    folder: Path, work: Path, shard_size: int, runner: str, cpus: int, kind: str = "copy", actor_cpus: float | None = None
) -> float:
    recipe = work / f"overhead-{runner}-{kind}-{actor_cpus}.yaml"
    placement = f", stages: {{{kind}: {{num_cpus: {actor_cpus}}}}}" if actor_cpus is not None else ""
    recipe.write_text(RECIPE.format(folder=folder, shard_size=shard_size, cpus=cpus, kind=kind, placement=placement))
    plan = load_plan(recipe, out=work / f"out-{runner}-{kind}-{actor_cpus}")
    start = time.perf_counter()
    result = build(plan, runner=runner, progress=False, num_cpus=cpus)
    seconds = time.perf_counter() - start
    assert result.summary["rows"] == len(list(folder.iterdir())), result.summary
    return seconds


METHODS = {
    "local": ("crispedit, local runner (in-process)", "local", "copy", None),
    "ray": ("crispedit, Ray, all steps fused in one task", "ray", "copy", None),
    "ray-actor": ("crispedit, Ray, copy in an actor pool (2 step boundaries)", "ray", "copy_actor", None),
    # The actor reserves no CPU, as a GPU stage's actor effectively does not compete for them:
    # what is left is the transport (families pickled across steps, parts merged at commit).
    "ray-actor-0cpu": ("crispedit, Ray, actor pool holding no CPU", "ray", "copy_actor", 0.0),
}


def measure(side: int, images: int, shard_size: int, cpus: int, methods: list[str]) -> dict[str, float]:
    """Seconds per method for ``images`` photos of ``side`` px, the floor first."""
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = make_photos(work / "photos", images, side)
        floor(paths[:shard_size], work / "warm", shard_size)  # warm the codecs and caches
        timings = {"floor": floor(paths, work / "floor", shard_size)}
        for method in methods:
            _, runner, kind, actor_cpus = METHODS[method]
            if runner == "ray":
                ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
            try:
                timings[method] = crispedit_build(work / "photos", work, shard_size, runner, cpus, kind, actor_cpus)
            finally:
                if runner == "ray":
                    ray.shutdown()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="512,1024", help="image sides to measure, one column each")
    parser.add_argument("--images", default="192,64", help="images per side (same order as --sides)")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--methods", default="local,ray,ray-actor,ray-actor-0cpu", help=f"of {', '.join(METHODS)}")
    args = parser.parse_args()
    sides = [int(x) for x in args.sides.split(",")]
    counts = [int(x) for x in args.images.split(",")]
    methods = args.methods.split(",")
    results = {side: (n, measure(side, n, args.shard_size, args.cpus, methods)) for side, n in zip(sides, counts)}
    print(f"\nshards of {args.shard_size}, {args.cpus} CPUs (Ray); floor: single process, decode + 2 PNG encodes + Parquet\n")
    header = "| method | " + " | ".join(f"{side}px: s (pairs/s), ratio" for side in sides) + " |"
    print(header)
    print("|---|" + "---:|" * len(sides))
    for method in ["floor", *methods]:
        cells = []
        for side in sides:
            n, timings = results[side]
            seconds = timings[method]
            cells.append(f"{seconds:.2f} ({n / seconds:.1f}), **{timings['floor'] / seconds:.2f}**")
        label = "floor (decode + 2 PNG encodes + Parquet)" if method == "floor" else METHODS[method][0]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nimages: " + ", ".join(f"{n} at {side}px" for side, (n, _) in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
