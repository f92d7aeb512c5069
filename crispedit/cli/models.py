"""``crispedit models``: every Hub model a recipe can load, its pin, files, size and licence; ``--download`` fetches them.

The list comes from the stages themselves (``Stage.model_files``), so what is downloaded is what the
loaders read. The token, when a model is gated, is read by huggingface_hub from ``HF_TOKEN``; it is never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    models = commands.add_parser("models", help="list (and --download) the Hub models a recipe loads: pins, files, sizes, licences")
    models.add_argument("recipe", type=Path)
    models.add_argument("--tiny", action="store_true", help="the recipe as `build --tiny` runs it (tiny twins: nothing to fetch)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument("--download", action="store_true", help="fetch exactly the listed files into the Hub cache")
    models.add_argument("--to", type=Path, metavar="DIR",
                        help="the cache folder to fetch into (default: huggingface_hub's cache); build with HF_HUB_CACHE=DIR")
    models.add_argument("--offline", action="store_true", help="do not ask the Hub for sizes (they show as unknown)")
    models.set_defaults(func=_models)


def _models(args: argparse.Namespace) -> int:
    from crispedit.cli.build import _load
    from crispedit.core.redact import scrub_text
    from crispedit.engine.plan import plan_stages
    from crispedit.models.hub import RevisionMismatch, download, plan_models, report

    if args.to is not None and not args.download:
        print("error: --to DIR goes with --download", file=sys.stderr)
        return 2
    problem = _not_a_cache(args.to) if args.to is not None else None
    if problem:
        print(f"error: --to {args.to}: {problem}", file=sys.stderr)
        return 2
    plan = _load(args)
    if plan is None:
        return 2
    try:
        found = plan_models(plan_stages(plan))
        rows = [report(stage, key, model, online=not args.offline) for stage, key, model in found]
        if args.download:
            for row, (_, _, model) in zip(rows, found, strict=True):
                row.commit, row.files = download(model, args.to, row.patterns if row.files is not None else None)
    except RevisionMismatch as error:
        print(f"error: {scrub_text(str(error))}", file=sys.stderr)
        return 2
    if args.json:
        payload: dict[str, Any] = {"recipe": plan.recipe.name, "models": [r.to_dict() for r in rows]}
        if args.download:
            payload["cache_dir"] = str(args.to) if args.to else None
        print(json.dumps(payload, indent=2))
        return 0
    _table(plan.recipe.name, rows, args)
    return 0


#: What a huggingface_hub cache folder holds; anything else means --to names someone's folder.
CACHE_ENTRIES = ("models--", "datasets--", "spaces--", ".locks", "CACHEDIR.TAG", "version.txt", ".cache")


def _not_a_cache(folder: Path) -> str | None:
    """Why ``folder`` cannot take the downloads (a file, or a folder that holds more than a Hub cache), or None."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "not a folder"
    others = sorted(p.name for p in folder.iterdir() if not p.name.startswith(CACHE_ENTRIES))
    if others:
        return f"holds files that are not a Hugging Face cache ({', '.join(others[:3])}); name an empty folder or a cache"
    return None


def _size(size: int | None) -> str:
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _files(row: Any) -> str:
    """Root files by name, folders as ``folder/ (n)``: the JSON has every path (or pattern)."""
    paths = row.files if row.files is not None else row.patterns
    folders: dict[str, int] = {}
    for path in paths:
        head, sep, _ = path.partition("/")
        folders[f"{head}/" if sep else head] = folders.get(f"{head}/" if sep else head, 0) + 1
    root = [name for name in folders if not name.endswith("/")]
    shown = root if len(root) <= 3 else [f"{len(root)} files"]
    return ", ".join(shown + [f"{name} ({n})" for name, n in folders.items() if name.endswith("/")])


def _table(recipe: str, rows: list[Any], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print(f"{recipe}: no Hub models" + (" (--tiny builds twins)" if args.tiny else ""))
        return
    table = Table(title=f"{recipe}: {len(rows)} Hub models")
    for column in ("stage.key", "model", "revision", "files", "size", "licence"):
        table.add_column(column, justify="right" if column == "size" else "left", overflow="fold")
    for row in rows:
        table.add_row(f"{row.stage}.{row.key}", row.id, (row.revision or "")[:12], _files(row), _size(row.size), row.license)
    console.print(table)
    known = [r.size for r in rows if r.size is not None]
    if known:
        console.print(f"total: {_size(sum(known))}" + ("" if len(known) == len(rows) else f" ({len(rows) - len(known)} unknown)"))
    for note in dict.fromkeys(r.note for r in rows if r.note):
        console.print(f"note: {note}")
    console.print("full revisions and file lists: --json")
    if args.download:
        where = f"HF_HUB_CACHE={args.to} " if args.to else ""
        console.print(f"fetched; build offline with: {where}HF_HUB_OFFLINE=1 crispedit build {args.recipe}")
