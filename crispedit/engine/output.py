"""The output folder of ``crispedit build``: claimed before the first write, resumed, or replaced without loss.

A build's folder is a crispedit output of kind ``build`` (:mod:`crispedit.core.outputs`): a
marker naming the layout's patterns is its first file. Then, by what the folder holds:

* nothing: a new build;
* a build with the same manifest (recipe fingerprint, item count, image settings): the
  same build, resumed; committed shards are kept;
* a different build: refused unless ``--overwrite``. Then, on a local disk, the new build
  is written beside the old one (``.NAME.crispedit-next-HASH``, itself resumable)
  and swapped in once every shard is committed, so the old build stays whole until the
  new one is; on an object store the old build's own files are deleted first;
* anything else (a user's folder, the source's own files, another kind of output):
  refused, with a one-line reason.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from crispedit import __version__
from crispedit.core.faults import fault_point
from crispedit.core.locations import resolve_location
from crispedit.core.outputs import Claim, OutputRefused, claim, marker_for, read_marker, remove_owned, swap_in, write_marker
from crispedit.core.redact import scrub_text
from crispedit.core.sample import digest
from crispedit.core.shards import BUILD_PATTERNS, legacy_marker
from crispedit.core.storage import Output
from crispedit.recipe import BuildPlan

log = logging.getLogger("crispedit")

NEXT_INFIX = ".crispedit-next-"


class OutputInUse(RuntimeError):
    """The output folder may not take this build (the message says why, in one line)."""


def manifest_of(plan: BuildPlan, count: int, columns: list[str]) -> dict[str, Any]:
    """What decides whether a folder already holds this build: a rerun with another of these is another build."""
    spec = plan.recipe.output
    return {
        "recipe": plan.recipe.name,
        "fingerprint": plan.fingerprint,
        "items": count,
        "shard_size": spec.shard_size,
        "image_format": spec.image_format,
        "quality": spec.quality,
        "png_compression": spec.png_compression,
        "reject_images": spec.reject_images,
        "score_columns": columns,
        "tiny": plan.tiny,
    }


def claim_output(plan: BuildPlan, manifest: dict[str, Any], overwrite: bool, reads: list[str]) -> tuple[BuildPlan, Path | None]:
    """Check and claim the plan's output; returns the plan to run and, when the build is staged beside
    an old one, the folder it replaces once complete. Raises OutputInUse."""
    try:
        if plan.parent_output is not None:  # --until: the full build's folder is claimed too
            parent = claim(plan.parent_output, "build", reads=reads, legacy=legacy_marker)
            if parent.previous is None:
                write_marker(parent.url, marker_for("build", patterns=BUILD_PATTERNS))
        allow = [plan.output_dir] if plan.parent_output is not None else []
        target = claim(plan.output_dir, "build", reads=reads, allow_inside=allow, legacy=legacy_marker)
    except OutputRefused as error:
        raise OutputInUse(str(error)) from None
    output = Output(target.url)
    old = _manifest(output) if target.previous is not None else None
    changed = [k for k in manifest if old is not None and old.get(k) != manifest[k]]
    if not changed:  # a new build, or this build resumed
        if read_marker(target.location) is None:
            write_marker(target.url, marker_for("build", patterns=BUILD_PATTERNS))
        return plan, None
    if not overwrite:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {manifest[k]!r}" for k in changed)
        raise OutputInUse(f"{output.url} holds a different build ({detail}); choose another --out, or pass --overwrite to rebuild it")
    try:
        target.check_replace(True)
    except OutputRefused as error:
        raise OutputInUse(str(error)) from None
    if not target.location.is_local:
        remove_owned(target.location, target.previous)
        write_marker(target.url, marker_for("build", patterns=BUILD_PATTERNS))
        return plan, None
    if read_marker(target.location) is None:  # a build from before markers: mark it, so the swap can remove exactly its files
        write_marker(target.url, target.previous)
    return _staged(plan, target, manifest), target.location.path


def _staged(plan: BuildPlan, target: Claim, manifest: dict[str, Any]) -> BuildPlan:
    """The plan moved to its staging folder beside ``target``, named by the manifest so a rerun of the same
    request resumes it (and another never mixes with it)."""
    assert target.location.path is not None
    home = target.location.path
    staging = home.parent / f".{home.name}{NEXT_INFIX}{digest(json.dumps(manifest, sort_keys=True))[:16]}"
    for stale in home.parent.glob(f".{home.name}{NEXT_INFIX}*"):
        if stale != staging:  # an unfinished replacement by another recipe: crispedit's own files only
            remove_owned(resolve_location(stale), marker_for("build", patterns=BUILD_PATTERNS))
            try:
                stale.rmdir()
            except OSError:
                log.warning("%s holds files no build wrote; left in place", stale)
    staging.mkdir(parents=True, exist_ok=True)
    write_marker(staging, marker_for("build", patterns=BUILD_PATTERNS))
    log.warning("%s holds another build: this one is written to %s and replaces it once every shard is committed", home, staging)
    return plan.model_copy(update={"output_dir": str(staging)})


def finish(staging: str, target: Path | None, complete: bool) -> str:
    """Swap a complete staged build in place of the one it replaces; returns where the build now is."""
    if target is None:
        return staging
    if not complete:
        log.warning("the new build stays in %s until every shard is committed (rerun the same command); %s is untouched",
                    staging, target)
        return staging
    swap_in(Path(staging), target)
    return str(target)


def _manifest(output: Output) -> dict[str, Any] | None:
    try:
        data = json.loads(output.read_bytes("manifest.json"))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_manifest(plan: BuildPlan, output: Output, manifest: dict[str, Any], models: dict[str, Any] | None = None) -> None:
    """manifest.json (with the stages as they ran, and the commit each Hub model resolved to) and the
    recipe's copy, both scrubbed of credentials. ``models`` is not compared on a rerun: a pin fixes it."""
    # The stages as they ran (filter chains expanded, --tiny applied), so the output explains
    # itself without the recipe's folder: what the dataset card and preview read.
    pipeline = [{"kind": e.kind, "name": e.name, "params": e.params.model_dump(mode="json")} for e in plan.stages]
    extra = {"models": models} if models else {}
    text = json.dumps({**manifest, "stages": pipeline, **extra, "crispedit_version": __version__}, indent=1)
    output.write_text("manifest.json", scrub_text(text))
    output.write_text("recipe.yaml", scrub_text(Path(plan.file).read_text(encoding="utf-8")))
    fault_point("after-manifest")
