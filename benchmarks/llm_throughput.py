"""LLM client throughput: requests per second against the ideal concurrency / latency.

The local chat-completions server (tests/helpers/llm_server.py, in its own process as a real
endpoint would be) answers every request after a fixed latency, so a client that keeps
``concurrency`` requests in flight at all times would finish ``concurrency / latency``
requests per second. The ratio to that ideal is what the client costs: the openai package,
answer validation, the asyncio plumbing, plus the test server's thread-per-connection
overhead on this machine. Target: >= 0.9 at 32.

Each batch is fresh questions with no cache, in one ``ask_many`` call; a warm-up batch
opens the connections first, as a long build would have. The client's CPU time per request
is printed too: unlike the ratio it does not depend on what else the machine is running.

    python benchmarks/llm_throughput.py [--latency 0.2] [--concurrency 1,8,32] [--seconds 3]   # from the repository root
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydantic import BaseModel, ConfigDict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crispedit.models.llm import LLMClient, LLMRequest, LLMSettings  # noqa: E402


class Edit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instruction: str
    target_caption: str
    edit_objects: list[str]
    task: str


def requests(count: int, tag: str) -> list[LLMRequest]:
    return [
        LLMRequest([{"role": "system", "content": "You write image edits."}, {"role": "user", "content": f"{tag} item {i}"}], Edit)
        for i in range(count)
    ]


class Server:
    """tests/helpers/llm_server.py in a child process (a real endpoint never shares the client's GIL)."""

    def __init__(self, latency: float) -> None:
        command = [sys.executable, str(REPO / "tests" / "llm_server.py"), "--port", "0", "--latency", str(latency)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        self.url = line.split(" at ", 1)[1].split()[0]

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/stats") as response:
            return json.load(response)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def measure(server: Server, concurrency: int, latency: float, seconds: float) -> dict[str, float]:
    client = LLMClient(LLMSettings(base_url=server.url, model="bench", api_key_env=None, concurrency=concurrency), None, stage="bench")
    try:
        client.ask_many(requests(concurrency, f"warm-up {concurrency}"))
        count = max(concurrency, round(seconds * concurrency / latency))
        before = server.stats()["count"]
        began, cpu = time.perf_counter(), time.process_time()
        answers = client.ask_many(requests(count, f"run {concurrency}"))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        stats = server.stats()
    finally:
        client.close()
    assert all(a.value is not None for a in answers) and stats["count"] - before == count
    rate, ideal = count / elapsed, concurrency / latency
    return {"requests": count, "seconds": elapsed, "rate": rate, "ideal": ideal, "ratio": rate / ideal,
            "cpu_ms": 1000 * cpu / count, "in_flight": stats["max_in_flight"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before each answer")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrencies")
    parser.add_argument("--seconds", type=float, default=3.0, help="about how long each measurement runs")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    server = Server(args.latency)
    try:
        print(f"latency {args.latency * 1000:.0f} ms per request, about {args.seconds:g} s per row\n")
        print("| concurrency | requests | seconds | requests/s | ideal/s | ratio | client CPU ms/request | most in flight so far |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for level in levels:
            r = measure(server, level, args.latency, args.seconds)
            print(f"| {level} | {r['requests']} | {r['seconds']:.2f} | {r['rate']:.1f} | {r['ideal']:.1f} | {r['ratio']:.3f} "
                  f"| {r['cpu_ms']:.2f} | {r['in_flight']} |")
    finally:
        server.stop()

if __name__ == "__main__":
    main()
