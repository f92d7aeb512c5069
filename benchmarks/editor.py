"""edit_model: per-backend overhead against the bare diffusers call, and openai-backend throughput.

    python benchmarks/editor.py [--repeats 20] [--items 4] [--latency 0.5] [--requests 64] [--side 32] [--in-process]
    python benchmarks/editor.py --openai-only --requests 256   # the openai row alone
    python benchmarks/editor.py --full --device cuda   # on a GPU: the real pipelines are not loaded here; twins at --max-side

Diffusers rows: the stage (grouping, seeding, provenance, padding to max_batch, resize back) against
the same pipeline's bare ``__call__`` with the same rows, sizes and generators (the tiny twins on
the CPU). Openai row: images per second through the backend against tests/helpers/image_edit_server.py
at a fixed latency and concurrency 16, beside the ceiling concurrency / latency. The server runs in a
process of its own (``python -m tests.helpers.image_edit_server``), as a real endpoint does: in the
benchmark's process its HTTP handling would hold the same GIL as the client, and the row would
measure the test server's capacity; ``--in-process`` measures that way too, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crispedit.core.stage import BuildContext  # noqa: E402
from crispedit.editors.diffusers_backend import EditRow  # noqa: E402
from crispedit.editors.edit_model import EditModelParams, EditModelStage  # noqa: E402
from crispedit.engine.run import apply_stage  # noqa: E402
from tests.helpers.stage_cases import pairs  # noqa: E402


def interleaved(first, second, repeats: int) -> tuple[float, float, float]:
    """Medians of ``first`` and ``second`` called in turn, and the median of their per-round ratio.

    On tiny twins a call lasts tens of milliseconds, so the machine's jitter is as large as the
    stage's own work: best-of-N of two separate series measured noise (+11% one run, -11% the next).
    Alternating the two calls (and which goes first) exposes both to the same load, and the per-round
    ratio cancels drift.
    """
    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    a, b = [], []
    for round_ in range(repeats):  # which goes first alternates too, so neither gets the other's warm caches
        if round_ % 2:
            b.append(timed(second))
            a.append(timed(first))
        else:
            a.append(timed(first))
            b.append(timed(second))
    return float(np.median(a)), float(np.median(b)), float(np.median(np.array(a) / np.array(b)))


def diffusers_row(pipeline: str, items: int, repeats: int, device: str) -> tuple[str, float, float, float]:
    params = EditModelParams.model_validate({"diffusers": {"pipeline": pipeline, "max_batch": 2, "device": device}})
    stage = EditModelStage(params, BuildContext("bench", "bench", 0, tiny=True))
    stage.setup()
    editor = stage.editor
    inputs = pairs(items)
    apply_stage(stage, "edit_model", [s.clone() for s in inputs], batch_size=64)  # warm-up
    rows = [EditRow(s.source_image, s.instruction, s.seed("edit")) for s in inputs]
    size = editor.size_for(inputs[0].source_image)
    chunks = [rows[i:i + 2] for i in range(0, len(rows), 2)] if not editor.traits.one_source_per_call else [[r] for r in rows]
    return (pipeline, *interleaved(lambda: apply_stage(stage, "edit_model", [s.clone() for s in inputs], batch_size=64),
                                   lambda: [editor.edit(c, size) for c in chunks], repeats))


@contextlib.contextmanager
def edit_server(latency: float, in_process: bool) -> Iterator[str]:
    """The base URL of tests/helpers/image_edit_server.py at ``latency``: in this process, or in a process of its own."""
    if in_process:
        from tests.helpers.image_edit_server import ImageEditServer

        with ImageEditServer(latency=latency) as server:
            yield server.url
        return
    command = [sys.executable, "-m", "tests.helpers.image_edit_server", "--port", "0", "--latency", str(latency)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if " at " not in line:
            raise RuntimeError(f"the image-edit server did not start: {line!r}")
        yield line.split(" at ", 1)[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=10)


def openai_row(requests: int, latency: float, side: int = 32, in_process: bool = False) -> tuple[float, float, int]:
    """(images per second, the ceiling concurrency / latency, the most requests the server had in flight)."""
    from crispedit.editors.openai_backend import EditRequest, ImageEditClient, ImageEditSettings

    image = pairs(1)[0].source_image
    if side != image.shape[0]:  # a photo-like gradient of the asked size
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        image = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2, np.tile(ramp, (side, 1))], -1).astype(np.uint8)
    with edit_server(latency, in_process) as url:
        os.environ["BENCH_EDIT_KEY"] = "sk-bench"
        settings = ImageEditSettings(base_url=url, model="gpt-image-1.5", api_key_env="BENCH_EDIT_KEY", concurrency=16)
        client = ImageEditClient(settings, None)
        client.edit_many([EditRequest(image, "warm up", 0)])
        start = time.perf_counter()
        answers = client.edit_many([EditRequest(image, f"make it red {i}", i) for i in range(requests)])
        elapsed = time.perf_counter() - start
        with urllib.request.urlopen(f"{url}/stats", timeout=10) as answer:
            in_flight = int(json.loads(answer.read())["max_in_flight"])
        client.close()
    assert all(a.image is not None for a in answers)
    return requests / elapsed, 16 / latency, in_flight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="rounds of stage and bare call, alternated")
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--pipelines", nargs="*", default=["StableDiffusionInstructPix2PixPipeline", "FluxKontextPipeline", "QwenImageEditPlusPipeline"])
    parser.add_argument("--full", action="store_true", help="more items and repeats (a GPU run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--side", type=int, default=32, help="source image side for the openai row, in pixels")
    parser.add_argument("--in-process", action="store_true", help="run the image-edit server in this process (it then shares the GIL)")
    parser.add_argument("--openai-only", action="store_true", help="only the openai row")
    args = parser.parse_args()
    if args.full:
        args.items, args.repeats, args.requests = 16, 10, 256
    with tempfile.TemporaryDirectory():
        if not args.openai_only:
            print("| backend | stage s (median) | bare pipeline s (median) | overhead (median per-round ratio) |\n|---|---|---|---|")
            for pipeline in args.pipelines:
                name, staged, bare, ratio = diffusers_row(pipeline, args.items, args.repeats, args.device)
                print(f"| diffusers {name} | {staged:.3f} | {bare:.3f} | {100 * (ratio - 1):+.1f}% |")
        rate, ceiling, in_flight = openai_row(args.requests, args.latency, args.side, args.in_process)
        where = "in this process" if args.in_process else "in its own process"
        print(f"\nopenai: {rate:.1f} images/s at concurrency 16, latency {args.latency} s, {args.requests} requests of a "
              f"{args.side} px source, server {where} (most in flight: {in_flight}); concurrency/latency = {ceiling:.1f}; "
              f"ratio {rate / ceiling:.2f}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
