"""``crispedit build``, ``validate`` and ``inspect``: running a recipe and reading its summary."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    build = commands.add_parser("build", help="run a recipe; reruns skip committed shards")
    build.add_argument("recipe", type=Path)
    build.add_argument("--tiny", action="store_true", help="swap every model for a tiny random-init twin")
    build.add_argument("--out", help="output directory or URL, instead of the recipe's output.dir (a new or empty folder, or this build's)")
    build.add_argument("--runner", choices=["ray", "local"], help="override execution.runner (local = in-process, for debugging)")
    build.add_argument("--address", help="Ray cluster address (also read from RAY_ADDRESS); default: start Ray locally")
    build.add_argument("--num-cpus", type=int, help="CPUs for a local Ray instance")
    build.add_argument("--max-shards", type=int, help="build at most this many pending shards, then stop")
    build.add_argument("--overwrite", action="store_true",
                       help="replace a different build in the output dir (built beside it, swapped in when complete)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.add_argument(
        "--until", metavar="STAGE",
        help="run the stages up to and including STAGE and write what they made to OUT/until/STAGE (same ids, shared cache)",
    )
    build.set_defaults(func=_build)

    validate = commands.add_parser(
        "validate", help="check a recipe without loading anything heavy; list its plugins, endpoints and outside paths")
    validate.add_argument("recipe", type=Path)
    validate.add_argument("--tiny", action="store_true")
    validate.set_defaults(func=_validate)

    inspect = commands.add_parser("inspect", help="print the summary of a build")
    inspect.add_argument("out", help="an output directory or object-store URL")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=_inspect)


def _load(args: argparse.Namespace, out: str | None = None) -> Any:
    from crispedit.core.redact import scrub_text
    from crispedit.recipe import RecipeError, load_plan

    try:
        return load_plan(args.recipe, tiny=args.tiny, out=out)
    except RecipeError as error:
        print(scrub_text(str(error)), file=sys.stderr)
        return None


def _validate(args: argparse.Namespace) -> int:
    plan = _load(args)
    if plan is None:
        return 2
    from crispedit.core.redact import scrub_url
    from crispedit.recipe.reach import recipe_reach

    stages = " -> ".join([f"{plan.source.kind}"] + [s.name for s in plan.stages])
    print(f"{plan.file}: ok: {plan.recipe.name} ({stages}); fingerprint {plan.fingerprint}; output {scrub_url(plan.output_dir)}")
    for line in recipe_reach(plan).lines():
        print(f"  {line}")
    return 0


def _build(args: argparse.Namespace) -> int:
    if args.tiny:  # tiny models are all overhead: torch threads only fight over the cores
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    plan = _load(args, out=args.out)
    if plan is None:
        return 2
    from crispedit.core.failures import StageBroken
    from crispedit.core.redact import scrub_text
    from crispedit.engine import BuildError, build
    from crispedit.engine.stall import BuildStalled
    from crispedit.models.llm import LLMConfigError
    from crispedit.recipe import plan_until

    if args.until:
        try:
            plan = plan_until(plan, args.until)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        result = build(
            plan, runner=args.runner, address=args.address, num_cpus=args.num_cpus,
            max_shards=args.max_shards, overwrite=args.overwrite, progress=not args.no_progress,
        )
    except BuildError as error:
        print(f"error: {scrub_text(str(error))}", file=sys.stderr)
        return 2
    except BuildStalled as error:  # committed shards are kept; the message names the waiting steps
        print(f"error: {scrub_text(str(error))}", file=sys.stderr)
        return 4
    except StageBroken as error:  # its traceback was logged once and saved under OUT/logs/
        print(f"error: the build stopped: {scrub_text(str(error))}", file=sys.stderr)
        return 3
    except LLMConfigError as error:  # a missing key or a wrong endpoint: nothing a rerun would fix
        print(f"error: {scrub_text(str(error))}", file=sys.stderr)
        return 2
    print_summary(result.summary)
    print(f"output: {scrub_text(result.out_dir)}  ({result.shards_built} shards built, {result.shards_skipped} already committed, {result.seconds:.1f}s)")
    if result.failed:
        print(f"error: {len(result.failed)} shards not committed (transient failures; rerun the same command to build them):", file=sys.stderr)
        for name, reason in sorted(result.failed.items()):
            print(f"  {name}: {scrub_text(str(reason))}", file=sys.stderr)
        return 1
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from crispedit.core.shards import read_markers
    from crispedit.core.stats import summarize
    from crispedit.core.storage import Output

    output = Output(args.out)
    if output.exists("summary.json"):
        summary = json.loads(output.read_bytes("summary.json"))
    elif output.list("_commits", "commit-*.json"):
        summary = summarize(read_markers(output))
    else:
        print(f"error: {args.out} is not a crispedit output (no summary.json or _commits/)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print_summary(summary)
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = f"{summary.get('recipe', '')}: {summary['rows']} rows, {summary['rejects']} rejects, {summary['shards']}/{summary.get('shards_total', summary['shards'])} shards"
    table = Table(title=title)
    stages = summary["stages"]
    has_gpu = any("gpu_seconds" in st for st in stages.values())
    has_usage = any(st.get("usage") for st in stages.values())
    columns = ["stage", "seen", "passed", "rejected", "seconds"] + ["GPU-s"] * has_gpu + ["usage"] * has_usage + ["drops by reason"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("stage", "usage", "drops by reason") else "right")
    for name, stats in stages.items():
        row = [name, str(stats["seen"]), str(stats["passed"]), str(sum(stats["rejected"].values())), f"{stats['seconds']:.2f}"]
        if has_gpu:
            row.append(f"{stats['gpu_seconds']:.1f}" if "gpu_seconds" in stats else "")
        if has_usage:
            row.append(", ".join(f"{k} {v:g}" for k, v in stats.get("usage", {}).items()))
        row.append(", ".join(f"{reason}: {n}" for reason, n in stats["rejected"].items()))
        table.add_row(*row)
    console.print(table)
    if summary.get("gpu_hours"):
        console.print(f"GPU-hours: {summary['gpu_hours']:.4f}")
    for warning in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")

