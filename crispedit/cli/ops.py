"""``crispedit refilter``, ``dedupe`` and ``export``: new datasets from a finished build, no models."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(commands: Any) -> None:
    refilter = commands.add_parser(
        "refilter",
        help="re-apply filter thresholds to a build's kept scores and write a new dataset (no model, no image re-encoded)",
        description="Decides every data row, and every filter reject that kept its images, again with the parameters of "
        "--filters; loosening brings rejects back, tightening drops rows. Same input, same filters: the same bytes.",
    )
    refilter.add_argument("out", help="the build's output directory (or URL)")
    refilter.add_argument("--filters", required=True, help="a filter chain: a file, or a bundled name (basic, ip2p, ultraedit, mllm_judge)")
    refilter.add_argument("--to", required=True, help="where to write the new dataset")
    refilter.add_argument("--overwrite", action="store_true", help="replace a different dataset at --to")
    refilter.add_argument("--no-plots", action="store_true", help="skip the score histograms")
    refilter.add_argument("--json", action="store_true", help="print the report as JSON")
    refilter.set_defaults(func=_refilter)

    dedupe = commands.add_parser(
        "dedupe",
        help="move near-duplicate pairs (pHash of source and target) of a whole build to the rejects, in a new dataset",
        description="Across shards, in build order: the first copy survives. Hashes come from the dedupe stage's provenance, "
        "or from the images when the build did not run it.",
    )
    dedupe.add_argument("out", help="the build's output directory (or URL)")
    dedupe.add_argument("--to", required=True, help="where to write the new dataset")
    dedupe.add_argument("--max-distance", type=int, default=4, help="bits of pHash (of 64) within which two pairs are copies (default 4)")
    dedupe.add_argument("--overwrite", action="store_true", help="replace a different dataset at --to")
    dedupe.add_argument("--json", action="store_true", help="print the report as JSON")
    dedupe.set_defaults(func=_dedupe)

    export = commands.add_parser(
        "export",
        help="write a build's preference pairs (chosen vs rejected candidates) or its multi-turn chains (MagicBrush layout)",
        description="--preference: every kept candidate against each sibling a select or a filter refused (its images kept), "
        "with the margin of one score; --magicbrush: the kept turns of multi-turn chains. Images are copied, never re-encoded.",
    )
    export.add_argument("out", help="the build's output directory (or URL)")
    what = export.add_mutually_exclusive_group(required=True)
    what.add_argument("--preference", action="store_true", help="(source, instruction, chosen, rejected, scores, margin) pairs")
    what.add_argument("--magicbrush", action="store_true", help="chains as img_id, turn_index, source_img, mask_img, instruction, target_img")
    export.add_argument("--to", required=True, help="where to write the export (a new or empty folder, or an earlier export)")
    export.add_argument("--layout", choices=["trl", "diffusion-dpo"], default="trl",
                        help="--preference columns: trl (images, prompt, chosen, rejected) or diffusion-dpo (caption, jpg_0, jpg_1, label_0)")
    export.add_argument("--score", help="the score that ranks siblings and gives the margin (default: the build's select score)")
    export.add_argument("--min-margin", type=float, default=0.0, help="leave out pairs whose margin is below this (default 0; ties never count)")
    export.add_argument("--lower-is-better", action="store_true", default=None,
                        help="--score ranks ascending (default: the select stage's direction, else higher is better)")
    export.add_argument("--overwrite", action="store_true", help="replace a different export at --to")
    export.add_argument("--json", action="store_true", help="print the report as JSON")
    export.set_defaults(func=_export)


def _refilter(args: argparse.Namespace) -> int:
    from crispedit.ops.refilter import RefilterError, refilter

    try:
        report = refilter(args.out, args.filters, args.to, overwrite=args.overwrite, plots=not args.no_plots)
    except (RefilterError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print(report, args.json)
    return 0


def _dedupe(args: argparse.Namespace) -> int:
    from crispedit.ops.dedupe import dedupe_build
    from crispedit.ops.refilter import RefilterError

    try:
        report = dedupe_build(args.out, args.to, args.max_distance, overwrite=args.overwrite)
    except (RefilterError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print(report, args.json)
    return 0


def _export(args: argparse.Namespace) -> int:
    from crispedit.ops.export import export_magicbrush, export_preference
    from crispedit.ops.refilter import RefilterError

    try:
        if args.preference:
            report = export_preference(args.out, args.to, layout=args.layout, score=args.score, min_margin=args.min_margin,
                                       lower_is_better=args.lower_is_better, overwrite=args.overwrite)
        else:
            report = export_magicbrush(args.out, args.to, overwrite=args.overwrite)
    except (RefilterError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        kind = "preference pairs" if args.preference else "chain turns"
        print(f"{report['out']}: {report['rows']} {kind} in {report['shards']} files" + "".join(
            f"; skipped {n} ({why})" for why, n in (report.get("skipped") or {}).items()))
    return 0


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=1))
        return
    print(f"{report['out']}: {report['rows']} rows, {report['rejects']} rejects in {report['shards']} shards "
          f"({report['restored']} restored, {report['dropped']} dropped)")
