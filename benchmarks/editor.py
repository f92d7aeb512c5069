"""edit_model: per-backend overhead against the bare diffusers call, and openai-backend throughput.

    python benchmarks/editor.py [--repeats 3] [--items 4] [--latency 0.5] [--requests 64]
    python benchmarks/editor.py --full --device cuda   # on a GPU: the real pipelines are not loaded here; twins at --max-side

Diffusers rows: the stage (grouping, seeding, provenance, padding to max_batch, resize back) against
the same pipeline's bare ``__call__`` with the same rows, sizes and generators (the tiny twins on
the CPU). Openai row: images per second through the backend against tests/helpers/image_edit_server.py
at a fixed latency and concurrency 16, beside the ceiling concurrency / latency.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crispedit.core.stage import BuildContext  # noqa: E402
from crispedit.editors.diffusers_backend import EditRow  # noqa: E402
from crispedit.editors.edit_model import EditModelParams, EditModelStage  # noqa: E402
from crispedit.engine.run import apply_stage  # noqa: E402
from tests.helpers.stage_cases import pairs  # noqa: E402


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def diffusers_row(pipeline: str, items: int, repeats: int, device: str) -> tuple[str, float, float]:
    params = EditModelParams.model_validate({"diffusers": {"pipeline": pipeline, "max_batch": 2, "device": device}})
    stage = EditModelStage(params, BuildContext("bench", "bench", 0, tiny=True))
    stage.setup()
    editor = stage.editor
    inputs = pairs(items)
    apply_stage(stage, "edit_model", [s.clone() for s in inputs], batch_size=64)  # warm-up
    staged = best(lambda: apply_stage(stage, "edit_model", [s.clone() for s in inputs], batch_size=64), repeats)
    rows = [EditRow(s.source_image, s.instruction, s.seed("edit")) for s in inputs]
    size = editor.size_for(inputs[0].source_image)
    chunks = [rows[i:i + 2] for i in range(0, len(rows), 2)] if not editor.traits.one_source_per_call else [[r] for r in rows]
    bare = best(lambda: [editor.edit(c, size) for c in chunks], repeats)
    return pipeline, staged, bare


def openai_row(requests: int, latency: float) -> tuple[float, float]:
    from crispedit.editors.openai_backend import EditRequest, ImageEditClient, ImageEditSettings
    from tests.helpers.image_edit_server import ImageEditServer

    image = pairs(1)[0].source_image
    with ImageEditServer(latency=latency) as server:
        os.environ["BENCH_EDIT_KEY"] = "sk-bench"
        settings = ImageEditSettings(base_url=server.url, model="gpt-image-1.5", api_key_env="BENCH_EDIT_KEY", concurrency=16)
        client = ImageEditClient(settings, None)
        client.edit_many([EditRequest(image, "warm up", 0)])
        start = time.perf_counter()
        answers = client.edit_many([EditRequest(image, f"make it red {i}", i) for i in range(requests)])
        elapsed = time.perf_counter() - start
    assert all(a.image is not None for a in answers)
    return requests / elapsed, 16 / latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--pipelines", nargs="*", default=["StableDiffusionInstructPix2PixPipeline", "FluxKontextPipeline", "QwenImageEditPlusPipeline"])
    parser.add_argument("--full", action="store_true", help="more items and repeats (a GPU run)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.full:
        args.items, args.repeats, args.requests = 16, 5, 256
    with tempfile.TemporaryDirectory():
        print("| backend | stage s | bare pipeline s | overhead |\n|---|---|---|---|")
        for pipeline in args.pipelines:
            name, staged, bare = diffusers_row(pipeline, args.items, args.repeats, args.device)
            print(f"| diffusers {name} | {staged:.3f} | {bare:.3f} | {100 * (staged / bare - 1):+.1f}% |")
        rate, ceiling = openai_row(args.requests, args.latency)
        print(f"\nopenai: {rate:.1f} images/s at concurrency 16, latency {args.latency} s; "
              f"concurrency/latency = {ceiling:.1f}; ratio {rate / ceiling:.2f}")


if __name__ == "__main__":
    main()
