"""``crispedit publish``: a build's repository tree, to the Hugging Face Hub, a local folder or any fsspec URL.

The tree is planned once and written three ways, so what ``--dry-run DIR`` shows is what
the Hub gets::

    README.md                         the dataset card (card.py), with configs default + rejects
    data/train-SSSSSSSS-EEEEEEEE.parquet     committed shards, Hub-shaped (hub_parquet.py)
    rejects/rejects-SSSSSSSS-EEEEEEEE.parquet
    assets/                           score histograms and example thumbnails the card shows
    recipe.yaml  summary.json  manifest.json

Only committed shards are in it (a marker whose files have the sizes it records), so
commit markers, temporaries, caches and logs never leave the machine. Small shards are
merged into files of up to ``file_bytes`` and any file whose row groups are too big or
that lacks a page index is rewritten; the rewritten files are cached under
OUT/.cache/publish/, so a rerun produces byte-identical files and skips what the Hub
already holds.

The upload goes through huggingface_hub's client (``create_repo``, ``create_commit``),
in commits of at most ``batch_files`` files (the Hub asks for 50-100 per commit), the
card last, so the card never points at files that are not there yet. Each commit names
the head it was planned on (``parent_commit``): if the branch moved meanwhile, the Hub
answers 412, and the remaining work is re-planned on the new head. A 429 waits as long as
``Retry-After`` says (else an exponential backoff). A rerun after an interruption lists
the repository and uploads only files that are missing or differ (by size and SHA-256 for
LFS files, git blob id for the others). Files under data/, rejects/ and assets/ that the
tree no longer has are deleted in the last commit, so a re-publish never mixes builds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from crispedit.core.backoff import backoff_delay, retry_after
from crispedit.core.hub_parquet import hub_shape_problems, max_row_group_bytes, write_hub_parquet
from crispedit.core.outputs import MARKER, Claim, OutputRefused, claim, list_files, marker_for, owns, replace_folder, write_marker
from crispedit.core.reader import Shard
from crispedit.core.redact import scrub_text
from crispedit.ops.build_info import BuildInfo, read_build
from crispedit.publish.card import ASSETS_DIR, ConfigFiles, build_terms, recipe_license, render_card

log = logging.getLogger("crispedit")

MANAGED_PREFIXES = ("data/", "rejects/", f"{ASSETS_DIR}/")
BUILD_FILES = ("recipe.yaml", "summary.json", "manifest.json")
#: ``datasets.config.MAX_SHARD_SIZE``: push_to_hub's file size.
DEFAULT_FILE_BYTES = 500 * 10**6
#: The Hub rejects a commit that puts more entries than this in one folder.
MAX_FILES_PER_FOLDER = 10_000
Repack = Literal["auto", "always", "never"]
T = TypeVar("T")


class PublishError(RuntimeError):
    """The build cannot be published as asked (incomplete, empty, no token...)."""


@dataclass(frozen=True)
class TreeFile:
    """One file of the repository tree: where it goes and where its bytes are."""

    path: str
    local: Path

    @property
    def size(self) -> int:
        return self.local.stat().st_size


# --- planning the tree -------------------------------------------------------------------


def plan_tree(
    out_dir: str | Path,
    *,
    partial: bool = False,
    rejects: bool = True,
    repack: Repack = "auto",
    file_bytes: int = DEFAULT_FILE_BYTES,
    row_group_bytes: int | None = None,
    repo_id: str | None = None,
    examples: int = 6,
    seed: int = 0,
    lookup_licenses: bool = False,
    staging: Path | None = None,
    force_license: bool = False,
) -> list[TreeFile]:
    """The repository tree of a build; generated files (card, assets, repacked shards) go to ``staging``.

    A recipe ``license:`` that the terms contradict (the models', the recipe's ``terms:`` applied,
    and the published rows' source licences: crispedit.models.terms) is refused unless
    ``force_license``: the card would offer the data under terms nobody may grant.
    """
    build = read_build(out_dir)
    try:
        terms = build_terms(build, rejects=rejects)
    except ValueError as error:
        raise PublishError(f"{build.out_dir}/recipe.yaml: terms: {error}") from None
    conflicts = terms.conflicts(recipe_license(build))
    if conflicts and not force_license:
        raise PublishError(f"license: {recipe_license(build)} contradicts the terms that apply ({'; '.join(conflicts)}); "
                           "declare the licence the terms allow, or pass --force-license")
    if not build.complete and not partial:
        raise PublishError(
            f"{build.out_dir} is incomplete: {len(build.shards)} of {build.shards_total} shards committed"
            f" (summary complete={build.summary.get('complete')}); finish the build or pass --partial"
        )
    if not build.shards:
        raise PublishError(f"{build.out_dir} has no committed shard to publish")
    stage_dir = staging or _staging_dir(build)
    limit = row_group_bytes or max_row_group_bytes()
    data = _pack(build.shards, "data", stage_dir, repack, file_bytes, limit)
    reject_files = _pack(build.shards, "rejects", stage_dir, repack, file_bytes, limit) if rejects and build.rejects else []
    if not (rejects and build.rejects):
        shutil.rmtree(stage_dir / "rejects", ignore_errors=True)
    configs = [ConfigFiles("default", "data/train-*", [f.local for f in data])]
    if reject_files:
        configs.append(ConfigFiles("rejects", "rejects/rejects-*", [f.local for f in reject_files]))
    shutil.rmtree(stage_dir / ASSETS_DIR, ignore_errors=True)
    readme = stage_dir / "README.md"
    readme.write_text(
        scrub_text(render_card(build, configs, stage_dir, repo_id=repo_id, examples=examples, seed=seed, lookup_licenses=lookup_licenses,
                               terms=terms)),
        encoding="utf-8",
    )
    assets = sorted(p for p in (stage_dir / ASSETS_DIR).rglob("*") if p.is_file())
    tree = [*data, *reject_files]
    tree += [TreeFile(p.relative_to(stage_dir).as_posix(), p) for p in assets]
    tree += [TreeFile(name, _scrubbed_copy(build.out_dir / name, stage_dir)) for name in BUILD_FILES if (build.out_dir / name).is_file()]
    tree.append(TreeFile("README.md", readme))
    folders = Counter(f.path.rsplit("/", 1)[0] if "/" in f.path else "" for f in tree)
    crowded = [f"{folder or '.'} ({n})" for folder, n in folders.items() if n > MAX_FILES_PER_FOLDER]
    if crowded:
        raise PublishError(f"more than {MAX_FILES_PER_FOLDER} files in {', '.join(crowded)}; raise --file-bytes to merge shards")
    return tree


def _scrubbed_copy(path: Path, staging: Path) -> Path:
    """A build's text file as it may leave the machine: credentials scrubbed (a build by an older crispedit may hold some)."""
    text = path.read_text(encoding="utf-8")
    clean = scrub_text(text)
    if clean == text:
        return path
    copy = staging / path.name
    if not copy.is_file() or copy.read_text(encoding="utf-8") != clean:
        copy.write_text(clean, encoding="utf-8")
    return copy


def _staging_dir(build: BuildInfo) -> Path:
    folder = build.out_dir / ".cache" / "publish"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:  # a read-only build: stage elsewhere
        return Path(tempfile.mkdtemp(prefix="crispedit-publish-"))


def _groups(shards: list[Shard], kind: str, repack: Repack, file_bytes: int) -> list[list[Shard]]:
    """Consecutive shards merged into files of at most ``file_bytes`` (never merged with ``never``)."""
    if repack == "never":
        return [[s] for s in shards]
    groups: list[list[Shard]] = []
    size = 0
    for shard in shards:
        bytes_ = _source(shard, kind).stat().st_size
        if groups and size + bytes_ <= file_bytes:
            groups[-1].append(shard)
            size += bytes_
        else:
            groups.append([shard])
            size = bytes_
    return groups


def _source(shard: Shard, kind: str) -> Path:
    return shard.data if kind == "data" else shard.rejects_file


def _pack(shards: list[Shard], kind: str, staging: Path, repack: Repack, file_bytes: int, limit: int) -> list[TreeFile]:
    folder = staging / kind
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if kind == "data" else "rejects"
    out: list[TreeFile] = []
    for group in _groups(shards, kind, repack, file_bytes):
        sources = [_source(s, kind) for s in group]
        if len(group) == 1 and (repack == "never" or (repack == "auto" and not hub_shape_problems(pq.read_metadata(sources[0]), limit))):
            out.append(TreeFile(f"{kind}/{sources[0].name}", sources[0]))
            continue
        name = f"{prefix}-{group[0].start:08d}-{group[-1].end:08d}.parquet"
        target = folder / name
        stamp = {"sources": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sources], "limit": limit}
        sidecar = folder / f".{name}.json"
        if not (target.is_file() and sidecar.is_file() and json.loads(sidecar.read_text(encoding="utf-8")) == stamp):
            tables = [pq.read_table(p) for p in sources]
            table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
            temporary = folder / f".tmp-{name}"
            write_hub_parquet(table, str(temporary), max_bytes=limit)
            os.replace(temporary, target)
            sidecar.write_text(json.dumps(stamp), encoding="utf-8")
        out.append(TreeFile(f"{kind}/{name}", target))
    used = {f.local.name for f in out}
    for stale in folder.glob(f"{prefix}-*.parquet"):
        if stale.name not in used:
            stale.unlink()
            (folder / f".{stale.name}.json").unlink(missing_ok=True)
    return out


# --- local and fsspec targets ---------------------------------------------------------------


def write_tree(tree: list[TreeFile], folder: str | Path, *, build: str | Path | None = None, overwrite: bool = False) -> Path:
    """``--dry-run``: the exact repository tree in a local folder, plus crispedit's marker (never uploaded).

    The folder is claimed as a crispedit ``publish`` output (:mod:`crispedit.core.outputs`): new,
    empty, or an earlier tree replaced with ``overwrite``; never the build (``build``) or a
    folder in or around it. The tree is written beside it and swapped in. Raises PublishError.
    """
    target = claim_tree_target(folder, build, overwrite, dry_run=True)
    with replace_folder(target, marker_for("publish", build=_identity(build))) as where:
        for item in tree:
            destination = Path(where) / item.path
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.local, destination)
    assert target.location.path is not None
    return target.location.path


def copy_tree(tree: list[TreeFile], url: str, storage_options: dict[str, Any] | None = None, *,
              build: str | Path | None = None, overwrite: bool = False) -> dict[str, list[str]]:
    """``--to URL``: the same tree on any fsspec filesystem; shards already there with the same size are kept.

    The target is claimed as a crispedit ``publish`` output (:mod:`crispedit.core.outputs`): new,
    empty, or an earlier tree; a tree of another build (or of none) is replaced only with
    ``overwrite``. Files of the earlier tree that this one lacks are deleted, and only those:
    the marker, written last, names the files a tree owns. Raises PublishError.
    """
    import fsspec

    identity = _identity(build)
    target = claim_tree_target(url, build, overwrite, dry_run=False)
    previous = target.previous
    fs, root = fsspec.core.url_to_fs(target.url, **(storage_options or {}))
    root = root.rstrip("/")
    copied, kept = [], []
    for item in sorted(tree, key=_upload_order):
        remote = f"{root}/{item.path}"
        if item.path.endswith(".parquet") and fs.exists(remote) and fs.size(remote) == item.size:
            kept.append(item.path)
            continue
        parent = remote.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        fs.put_file(str(item.local), remote)
        copied.append(item.path)
    wanted = {item.path for item in tree}
    deleted = []
    for name in list_files(target.location) if previous is not None else []:
        if name not in wanted and name != MARKER and owns(previous, name):
            fs.rm_file(f"{root}/{name}")
            deleted.append(f"{root}/{name}")
    write_marker(target.location, marker_for("publish", files=sorted(wanted), build=identity))
    return {"copied": copied, "kept": kept, "deleted": deleted}


def claim_tree_target(target: str | Path, build: str | Path | None, overwrite: bool, *, dry_run: bool) -> Claim:
    """Check a ``--dry-run`` folder or a ``--to`` URL before anything is planned or written (see write_tree, copy_tree).

    A dry run replaces an earlier tree only with ``overwrite``; ``--to`` also syncs an earlier
    tree of the same build. Raises PublishError.
    """
    try:
        where = claim(target, "publish", reads=[build] if build is not None else [])
        if dry_run and not where.location.is_local:
            raise OutputRefused(f"{target}: --dry-run writes a local folder; use --to for a URL")
        identity = _identity(build)
        same = not dry_run and where.previous is not None and identity is not None and where.previous.get("build") == identity
        where.check_replace(overwrite, same=same)
    except OutputRefused as error:
        raise PublishError(str(error)) from None
    return where


def _identity(build: str | Path | None) -> str | None:
    """Which build a tree comes from (its fingerprint), so a re-publish of it is a sync, not a replacement."""
    if build is None:
        return None
    try:
        return str(json.loads((Path(build) / "manifest.json").read_text(encoding="utf-8")).get("fingerprint")) or None
    except (OSError, ValueError):
        return None


def _upload_order(item: TreeFile) -> tuple[int, str]:
    """Shards first, then assets and build files, the card last."""
    if item.path == "README.md":
        return 3, item.path
    if item.path.startswith(("data/", "rejects/")):
        return 0, item.path
    if item.path.startswith(f"{ASSETS_DIR}/"):
        return 1, item.path
    return 2, item.path


# --- the Hub ------------------------------------------------------------------------------------


@dataclass
class RetryPolicy:
    """How hard to try: 429 and 5xx retries per call, and how many times to re-plan after a 412."""

    max_retries: int = 8
    base_wait: float = 2.0
    max_wait: float = 120.0
    max_conflicts: int = 10
    sleep: Callable[[float], None] = time.sleep


@dataclass
class UploadReport:
    uploaded: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    commits: int = 0
    rate_limited: int = 0
    conflicts: int = 0
    waits: list[float] = field(default_factory=list)


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _polite(call: Callable[[], T], policy: RetryPolicy, report: UploadReport, what: str) -> T:
    """Run one Hub call; on 429 wait ``Retry-After`` (else back off), on 5xx back off; then retry."""
    from huggingface_hub.errors import HfHubHTTPError

    attempt = 0
    while True:
        try:
            return call()
        except HfHubHTTPError as error:
            status = _status(error)
            if status not in (429, 500, 502, 503, 504) or attempt >= policy.max_retries:
                raise
            wait = retry_after(getattr(error.response, "headers", None)) if status == 429 else None
            if wait is None:
                wait = backoff_delay(attempt, policy.base_wait, policy.max_wait)
            if status == 429:
                report.rate_limited += 1
            report.waits.append(wait)
            log.warning("%s: HTTP %s; waiting %.1fs before retry %d/%d", what, status, wait, attempt + 1, policy.max_retries)
            policy.sleep(wait)
            attempt += 1


_HASHES: dict[tuple[str, int, int, str], str] = {}


def _digest(path: Path, kind: str) -> str:
    """SHA-256 of the content (``lfs``) or git's blob id (``git``), cached per file state."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, kind)
    if key not in _HASHES:
        digest = hashlib.sha256() if kind == "lfs" else hashlib.sha1(f"blob {stat.st_size}\0".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def same_content(local: Path, remote: Any) -> bool:
    """Whether a repository file (a ``RepoFile``) already holds the local file's bytes."""
    lfs = getattr(remote, "lfs", None)
    size = lfs.size if lfs is not None else remote.size
    if size != local.stat().st_size:
        return False
    if lfs is not None:
        return _digest(local, "lfs") == lfs.sha256
    return _digest(local, "git") == remote.blob_id


def upload_tree(
    tree: list[TreeFile],
    repo_id: str,
    *,
    api: Any = None,
    revision: str = "main",
    private: bool | None = None,
    batch_files: int = 50,
    policy: RetryPolicy | None = None,
    message: str = "Upload dataset with crispedit",
    overwrite: bool = False,
) -> UploadReport:
    """Put the tree in a Hub dataset repository, committing only what is missing or different.

    Files under data/, rejects/ and assets/ that the tree lacks are deleted, but only from a
    repository crispedit published (its root holds the tree's manifest.json and summary.json);
    in another one that would delete someone's files, so it is refused unless ``overwrite``.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import RepoFile

    api = api or HfApi()
    policy = policy or RetryPolicy()
    report = UploadReport()
    _polite(lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True), policy, report, "create repo")
    wanted = {item.path for item in tree}
    first = True
    while True:
        head = _polite(lambda: api.repo_info(repo_id, repo_type="dataset", revision=revision).sha, policy, report, "repo info")
        listing = _polite(
            lambda: list(api.list_repo_tree(repo_id, repo_type="dataset", revision=head, recursive=True)), policy, report, "list files"  # noqa: B023
        )
        remote = {entry.path: entry for entry in listing if isinstance(entry, RepoFile)}
        todo = [item for item in sorted(tree, key=_upload_order) if item.path not in remote or not same_content(item.local, remote[item.path])]
        if first:
            report.already_there = sorted(wanted - {item.path for item in todo})
            first = False
        stale = sorted(p for p in remote if p.startswith(MANAGED_PREFIXES) and p not in wanted)
        if stale and not overwrite and not {"manifest.json", "summary.json"} <= set(remote):
            shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
            raise PublishError(f"{repo_id} holds files crispedit did not publish ({shown}); publish to another repository, "
                               "or pass --overwrite to replace them")
        if not todo and not stale:
            return report
        batches = [todo[i : i + batch_files] for i in range(0, len(todo), batch_files)] or [[]]
        try:
            for number, batch in enumerate(batches, 1):
                deletions = stale if number == len(batches) else []
                operations = [CommitOperationAdd(path_in_repo=item.path, path_or_fileobj=str(item.local)) for item in batch]
                operations += [CommitOperationDelete(path_in_repo=path) for path in deletions]
                summary = message if len(batches) == 1 else f"{message} (part {number} of {len(batches)})"
                parent = head
                info = _polite(
                    lambda: api.create_commit(  # noqa: B023
                        repo_id, operations, commit_message=summary, repo_type="dataset", revision=revision, parent_commit=parent  # noqa: B023
                    ),
                    policy,
                    report,
                    f"commit {number}/{len(batches)}",
                )
                head = info.oid
                report.commits += 1
                report.uploaded += [item.path for item in batch]
                report.deleted += deletions
                log.info("committed %d files (%d/%d) as %s", len(batch), number, len(batches), head[:10])
            return report
        except HfHubHTTPError as error:
            if _status(error) not in (409, 412) or report.conflicts >= policy.max_conflicts:
                raise
            report.conflicts += 1
            wait = min(policy.max_wait, policy.base_wait * 2 ** (report.conflicts - 1)) * random.random()
            log.warning("the branch moved while uploading (HTTP %s); re-planning on the new head", _status(error))
            policy.sleep(wait)


def hub_token_present() -> bool:
    """Whether huggingface_hub finds a token (HF_TOKEN or the login cache). The token is not kept, logged or passed on."""
    from huggingface_hub import get_token

    return get_token() is not None
