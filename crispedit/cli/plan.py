"""``crispedit plan``: the resource plan on a stated cluster shape and, from a measured sample, the cost of N kept pairs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    plan = commands.add_parser(
        "plan", help="print what every step reserves on a cluster shape and, from a sample, what N kept pairs cost")
    plan.add_argument("recipe", type=Path)
    plan.add_argument("--tiny", action="store_true", help="plan the tiny twins (as `build --tiny`)")
    plan.add_argument("--items", type=int, help="kept pairs wanted (needs --sample or --from)")
    plan.add_argument("--sample", type=int, metavar="K", help="first build K source items (to --sample-out) and measure them")
    plan.add_argument("--sample-out", help="where the sample is built (default: the recipe's output dir + '.plan-sample')")
    plan.add_argument("--from", dest="from_build", metavar="OUT", help="measure a finished build (its summary.json) instead")
    plan.add_argument("--runner", choices=["ray", "local"], help="runner of the sample build")
    plan.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1), help="cluster CPUs (default: this machine's)")
    plan.add_argument("--gpus", type=float, default=0.0, help="cluster GPUs (default 0)")
    plan.add_argument("--gpus-per-node", type=float, help="GPUs of the largest node (default: --gpus)")
    plan.add_argument("--memory-gb", type=float, default=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                      help="cluster memory in GiB (default: this machine's)")
    plan.add_argument("--gpu-memory-gb", type=float,
                      help="memory of one GPU in GiB for the sharing check (default: execution.gpu_memory_gb, else this machine's CUDA device)")
    plan.add_argument("--json", action="store_true", help="print JSON instead of tables")
    plan.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    from crispedit.cli.build import _load
    from crispedit.engine.plan import resource_plan
    from crispedit.engine.resources import PlanError

    plan = _load(args)
    if plan is None:
        return 2
    resources = {"CPU": args.cpus, "GPU": args.gpus, "memory": args.memory_gb * 2**30}
    node = dict(resources, GPU=args.gpus if args.gpus_per_node is None else args.gpus_per_node)
    report: dict[str, Any] = {"cluster": {"cpus": args.cpus, "gpus": args.gpus, "memory_gb": round(args.memory_gb, 1)}}
    try:
        fitted = resource_plan(plan, resources, [{"Alive": True, "Resources": node}], gpu_memory_gb=args.gpu_memory_gb)
    except PlanError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report["resource_plan"] = [
        {"step": s.label, "pool": s.pool, "workers": list(s.workers), "num_cpus": s.num_cpus, "num_gpus": s.num_gpus,
         "memory_gb": s.memory_gb, "gpu_memory_gb": s.gpu_memory_gb} for s in fitted.steps
    ]
    lines = fitted.lines()
    if args.items is not None:
        summary = _measured(args, plan)
        if summary is None:
            return 2
        from crispedit.engine.estimate import estimate

        try:
            cost = estimate(summary, args.items, cpus=args.cpus, gpus=args.gpus)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        report["estimate"] = cost.to_dict()
        lines += cost.lines()
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return 0


def _measured(args: argparse.Namespace, plan: Any) -> dict[str, Any] | None:
    """The summary to scale from: a finished build's, or a K-item sample built now."""
    if args.from_build:
        path = Path(args.from_build) / "summary.json"
        if not path.is_file():
            print(f"error: {path} not found: --from names a finished build's output folder", file=sys.stderr)
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    if not args.sample:
        print("error: --items needs a measurement: --sample K (build K items now) or --from OUT (a finished build)", file=sys.stderr)
        return None
    from crispedit.engine import build
    from crispedit.engine.plan import with_shard_size
    from crispedit.recipe import load_plan

    out = args.sample_out or f"{plan.output_dir.rstrip('/')}.plan-sample"
    sample = with_shard_size(load_plan(args.recipe, tiny=args.tiny, out=out), args.sample)
    return build(sample, runner=args.runner, max_shards=1, progress=False).summary
