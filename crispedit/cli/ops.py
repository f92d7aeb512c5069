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
    refilter.add_argument("--filters", help="a filter chain: a file, or a bundled name (basic, ip2p, ultraedit, mllm_judge); "
                          "without it, the build's own chain")
    refilter.add_argument("--threshold-from-survival", action="append", default=[], metavar="SCORE",
                          help="also reject pairs below SCORE's survival knee (see `crispedit report`); repeatable")
    refilter.add_argument("--to", required=True, help="where to write the new dataset")
    refilter.add_argument("--overwrite", action="store_true", help="replace a different dataset at --to")
    refilter.add_argument("--no-plots", action="store_true", help="skip the score histograms")
    refilter.add_argument("--json", action="store_true", help="print the report as JSON")
    refilter.set_defaults(func=_refilter)

    report = commands.add_parser(
        "report",
        help="survival curves with a suggested threshold per score, agreement between scores, and with a human audit set",
        description="Writes OUT/report.json and OUT/survival-SCORE.png from the build's kept scores (rejects included); no model.",
    )
    report.add_argument("out", help="the build's output directory (or URL: then nothing is written, the report is printed)")
    report.add_argument("--audit", help="a Parquet of human labels: columns id (a row id of the build) and label (true = good pair)")
    report.add_argument("--no-plots", action="store_true", help="skip the survival PNGs")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(func=_report)

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
    from crispedit.ops.report import ReportError

    if args.filters is None and not args.threshold_from_survival:
        print("error: refilter needs --filters, --threshold-from-survival or both", file=sys.stderr)
        return 2
    try:
        report = refilter(args.out, args.filters, args.to, overwrite=args.overwrite, plots=not args.no_plots,
                          survival=args.threshold_from_survival)
    except (RefilterError, ReportError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print(report, args.json)
    return 0


def _report(args: argparse.Namespace) -> int:
    from crispedit.ops.refilter import RefilterError
    from crispedit.ops.report import ReportError, report

    try:
        found = report(args.out, args.audit, plots=not args.no_plots)
    except (ReportError, RefilterError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    for column, s in found["scores"].items():
        knee = f"knee {s['knee']:g} keeps {s['kept_at_knee']:.1%}" if s["knee"] is not None else "no knee"
        bound = f"; build min {s['threshold']:g} keeps {s['kept_at_threshold']:.1%}" if s["threshold"] is not None else ""
        print(f"{column}: {s['scored']} scored, {knee}{bound}")
    for pair in found["agreement"]:
        rho = "n/a" if pair["spearman"] is None else f"{pair['spearman']:.3f}"
        k = "n/a" if pair["kappa"] is None else f"{pair['kappa']:.3f}"
        print(f"{pair['a']} ~ {pair['b']}: spearman {rho}, kappa {k} on {pair['pairs']} pairs")
    for column, a in found.get("audit", {}).get("scores", {}).items():
        acc = "n/a" if a["accuracy"] is None else f"{a['accuracy']:.1%}"
        k = "n/a" if a["kappa"] is None else f"{a['kappa']:.3f}"
        print(f"audit {column} >= {a['cut']:g}: accuracy {acc}, kappa {k}, {a['confusion']}")
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
    for name, reasons in (report.get("not_applicable") or {}).items():
        for reason, count in reasons.items():
            print(f"  {name}: {count} rows passed as not applicable ({reason})")
