"""The ``publish`` and ``preview`` subcommands; ``crispedit.cli`` calls :func:`register`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from crispedit.core.redact import scrub_text

log = logging.getLogger("crispedit")


def _bytes(text: str) -> int:
    """``500MB``, ``2GB``, ``100000`` -> bytes (decimal units, as ``datasets`` reads them)."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    value = text.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if value.endswith(unit):
            return int(float(value[: -len(unit)]) * factor)
    return int(value)


def register(commands: Any) -> None:
    publish = commands.add_parser(
        "publish",
        help="put a finished build on the Hugging Face Hub (or a folder, or any fsspec URL) with a dataset card",
        description="Uploads committed shards, the rejects as their own config, recipe.yaml, summary.json, the card and its plots. "
        "The token comes from HF_TOKEN or `hf auth login`. Reruns upload only what is missing.",
    )
    publish.add_argument("out", help="the build's output directory")
    publish.add_argument("--repo-id", help="ORG/NAME of the Hub dataset repository")
    publish.add_argument("--private", action="store_true", help="create the repository private")
    publish.add_argument("--revision", default="main", help="branch to commit to (default main)")
    publish.add_argument("--partial", action="store_true", help="publish an incomplete build's committed shards")
    publish.add_argument("--force-license", action="store_true",
                         help="publish under the recipe's license: even where the models' terms contradict it (see the card's terms)")
    publish.add_argument("--no-rejects", dest="rejects", action="store_false", help="leave the rejects config out")
    publish.add_argument("--repack", choices=["auto", "always", "never"], default="auto",
                         help="auto: merge small shards and rewrite files that are not Hub-shaped; always; never (upload shards as they are)")
    publish.add_argument("--file-bytes", type=_bytes, default="500MB", help="largest merged file (default 500MB, as push_to_hub)")
    publish.add_argument("--row-group-bytes", type=_bytes, default=None, help="largest row group (default: datasets' 100MB)")
    publish.add_argument("--batch-files", type=int, default=50, help="files per commit (default 50)")
    publish.add_argument("--examples", type=int, default=6, help="example pairs shown in the card")
    publish.add_argument("--seed", type=int, default=0, help="seed of the card's example sample")
    publish.add_argument("--dry-run", metavar="DIR", help="write the exact repository tree to DIR (new or empty); upload nothing")
    publish.add_argument("--to", metavar="URL", help="copy the tree to an fsspec URL (s3://..., gs://..., a folder) instead of the Hub")
    publish.add_argument("--overwrite", action="store_true",
                         help="replace an earlier --dry-run tree, a --to tree of another build (only files crispedit wrote there), "
                         "or files under data/, rejects/, assets/ of a Hub repository crispedit did not publish")
    publish.set_defaults(func=_publish)

    preview = commands.add_parser("preview", help="write static pages (OUT/preview/) to browse a build, even a partial one")
    preview.add_argument("out", help="the build's output directory")
    preview.add_argument("--pairs", type=int, default=120, help="pairs in the sample (default 120)")
    preview.add_argument("--rejects-per-group", type=int, default=6, help="examples per (stage, reason) group")
    preview.add_argument("--seed", type=int, default=0, help="sampling seed")
    preview.add_argument("--folder", help="write here (a new or empty folder, outside the build) instead of OUT/preview/")
    preview.add_argument("--overwrite", action="store_true", help="replace an earlier preview in --folder")
    preview.add_argument("--open", action="store_true", help="open the pages in a browser")
    preview.set_defaults(func=_preview)


def _publish(args: argparse.Namespace) -> int:
    from huggingface_hub import constants

    from crispedit.publish.hub import (
        PublishError,
        claim_tree_target,
        copy_tree,
        hub_token_present,
        plan_tree,
        upload_tree,
        write_tree,
    )

    to_hub = args.dry_run is None and args.to is None
    if to_hub and not args.repo_id:
        print("error: give --repo-id ORG/NAME (or --dry-run DIR / --to URL)", file=sys.stderr)
        return 2
    if to_hub and not hub_token_present():
        print("error: no Hugging Face token; set HF_TOKEN or run `hf auth login`", file=sys.stderr)
        return 2
    try:
        for target, dry in ((args.dry_run, True), (args.to, False)):  # refuse a bad target before any work
            if target is not None:
                claim_tree_target(target, args.out, args.overwrite, dry_run=dry)
        tree = plan_tree(
            args.out, partial=args.partial, rejects=args.rejects, repack=args.repack, file_bytes=args.file_bytes,
            row_group_bytes=args.row_group_bytes, repo_id=args.repo_id, examples=args.examples, seed=args.seed,
            lookup_licenses=to_hub, force_license=args.force_license,
        )
        size = sum(item.size for item in tree)
        print(f"tree: {len(tree)} files, {size / 1e6:.1f} MB")
        if args.dry_run is not None:
            folder = write_tree(tree, args.dry_run, build=args.out, overwrite=args.overwrite)
            print(f"dry run: wrote the repository tree to {folder}")
        if args.to is not None:
            result = copy_tree(tree, args.to, build=args.out, overwrite=args.overwrite)
            print(f"{scrub_text(args.to)}: {len(result['copied'])} copied, {len(result['kept'])} already there, "
                  f"{len(result['deleted'])} stale removed")
        if to_hub:
            report = upload_tree(tree, args.repo_id, revision=args.revision, private=args.private or None, batch_files=args.batch_files,
                                 overwrite=args.overwrite)
            print(
                f"{constants.ENDPOINT}/datasets/{args.repo_id}: {len(report.uploaded)} uploaded, {len(report.already_there)} already there,"
                f" {len(report.deleted)} stale removed, {report.commits} commits ({report.rate_limited} rate limits, {report.conflicts} conflicts)"
            )
    except (PublishError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        print(f"error: {scrub_text(str(error))}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - only the Hub's own failures are turned into a line; the rest re-raise
        reason = hub_failure(error)
        if reason is None:
            raise
        log.info("the Hub call failed", exc_info=True)
        print(f"error: {constants.ENDPOINT}: {reason}", file=sys.stderr)
        return 2
    return 0


def hub_failure(error: BaseException) -> str | None:
    """A one-line reason for a failure to talk to the Hub (no network, refused, an HTTP error), or None for anything else."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return f"offline mode is on (HF_HUB_OFFLINE): {error}"
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"the Hub answered {status}: {scrub_text(first)}" if status else scrub_text(first)
    # huggingface_hub's HTTP client (httpx, or its fork httpx2) raises TransportError subclasses
    names = {cls.__name__ for cls in type(error).__mro__}
    if isinstance(error, ConnectionError | TimeoutError) or names & {"TransportError", "ConnectError", "TimeoutException", "NetworkError"}:
        return f"cannot reach the Hub ({type(error).__name__}: {scrub_text(str(error)) or 'no answer'}); check the network or HF_ENDPOINT"
    return None


def _preview(args: argparse.Namespace) -> int:
    from crispedit.core.outputs import OutputRefused
    from crispedit.publish.preview import open_preview, write_preview

    try:
        result = write_preview(args.out, pairs=args.pairs, rejects_per_group=args.rejects_per_group, seed=args.seed,
                               folder=args.folder, overwrite=args.overwrite)
    except (FileNotFoundError, NotADirectoryError, PermissionError, OutputRefused) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"preview: {result.folder / 'index.html'} ({result.pairs} pairs, {result.reject_examples} reject examples, "
          f"{result.files} files, {result.bytes / 1e6:.1f} MB)")
    if args.open:
        open_preview(result)
    return 0
