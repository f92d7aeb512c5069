"""Folders crispedit owns: a marker that says so, checks before anything is written, and replacing without loss.

Every command that writes a folder (``build``, ``preview``, ``refilter``, ``dedupe``,
``publish --to/--dry-run``, ``train``) claims its target here first. A claim is refused
(:class:`OutputRefused`, one line) when the target

* is a file, or an fsspec chain;
* is, contains or lies inside a location the command reads (the build it reads from, a
  source's files), however either is spelled (see :mod:`crispedit.core.locations`);
* lies inside another crispedit output (its files would be that output's);
* is not empty and holds no crispedit marker, or the marker of another kind of output.

An earlier output of the same kind is replaced only when the command says so
(``--overwrite``, or a rerun of the same request), and only if every file in it is one its
marker names: crispedit deletes nothing it did not write. A local replacement is written
beside the target (``.NAME.crispedit-new-*``) and swapped in by two renames, so an
interruption leaves the old output whole (a rerun puts back an output left aside by a
crash between the renames). Object stores have no rename: there the old output's files are
removed first and the new ones written in place.

The marker is ``.crispedit-output.json`` at the output's root: its kind, and the files
(``files``) or glob patterns (``patterns``, for outputs that grow shard by shard) it owns.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crispedit import __version__
from crispedit.core.locations import Location, resolve_location
from crispedit.core.paths import UnsafePathError

log = logging.getLogger("crispedit")

MARKER = ".crispedit-output.json"
#: Legacy outputs (written before markers existed) are recognised by a function of the folder.
Legacy = Callable[[Location], "dict[str, Any] | None"]
NEW_INFIX = ".crispedit-new-"
OLD_INFIX = ".crispedit-old-"


class OutputRefused(RuntimeError):
    """A target a command must not write to, or may not replace as asked. The message is one line."""


@dataclass
class Claim:
    """A target checked for one kind of output; ``previous`` is the marker of the output already there."""

    location: Location
    kind: str
    previous: dict[str, Any] | None

    @property
    def url(self) -> str:
        return self.location.url

    def check_replace(self, overwrite: bool, same: bool = False, flag: str = "--overwrite") -> None:
        """Refuse to replace the output already there unless asked (``overwrite``) or it is the same request (``same``).

        Even when asked, an output holding files its marker does not name is refused: those are someone's.
        """
        if self.previous is None:
            return
        if not (overwrite or same):
            raise OutputRefused(f"{self.url} holds an earlier crispedit {self.kind}; pass {flag} to replace it, or choose another folder")
        strangers = [name for name in list_files(self.location) if not owns(self.previous, name)]
        if strangers:
            shown = ", ".join(strangers[:3]) + (f" and {len(strangers) - 3} more" if len(strangers) > 3 else "")
            raise OutputRefused(f"{self.url} holds files its crispedit {self.kind} did not write ({shown}); move them away first")


def claim(
    target: str | os.PathLike[str] | Location,
    kind: str,
    *,
    reads: Iterable[str | os.PathLike[str] | Location] = (),
    allow_inside: Iterable[str | os.PathLike[str] | Location] = (),
    legacy: Legacy | None = None,
) -> Claim:
    """Check ``target`` for an output of ``kind``; see the module docstring for what is refused.

    ``reads`` are the locations the command reads; ``allow_inside`` the crispedit outputs the
    target may sit inside (a build's own ``preview/``).
    """
    try:
        where = resolve_location(target)
    except UnsafePathError as error:
        raise OutputRefused(str(error)) from None
    given = os.fspath(target) if not isinstance(target, Location) else target.given
    if where.chained:
        raise OutputRefused(f"{given}: an output is a folder or a plain URL, not an fsspec chain")
    if not where.is_local and ".." in where.segments():
        raise OutputRefused(f"{given}: '..' in an object-store URL")
    exempt = any(where.same(resolve_location(a)) for a in allow_inside)
    for read in reads:
        source = resolve_location(read)
        if where.overlaps(source) and not (exempt and where.inside(source) and not where.same(source)):
            shown = given if given in (where.url, f"{where.url}/") else f"{given or repr(given)} ({where.url})"
            if where.same(source):
                raise OutputRefused(f"{shown} is what this command reads; choose a folder outside it")
            relation = "is inside" if where.inside(source) else "contains"
            raise OutputRefused(f"{shown} {relation} {source.url}, which this command reads; choose a folder outside it")
    if where.is_local:
        assert where.path is not None
        _recover(where.path)
        if where.path.exists() and not where.path.is_dir():
            raise OutputRefused(f"{given} is a file, not a folder")
        if not exempt:
            _refuse_inside_other(where, kind)
    else:
        fs, path = _remote(where)
        if fs.isfile(path):
            raise OutputRefused(f"{given} is a file, not a folder")
    marker = read_marker(where)
    if marker is None and legacy is not None:
        marker = legacy(where)
    if marker is None:
        # a claim killed while its marker was written leaves only the marker's temporary: still empty
        present = [n for n in list_files(where, limit=8) if not n.startswith(f".tmp-{MARKER}")][:4]
        if present:
            shown = ", ".join(present[:3])
            raise OutputRefused(f"{given} is not empty and was not written by crispedit (it holds {shown}"
                                f"{', ...' if len(present) > 3 else ''}); choose a new or empty folder")
        return Claim(where, kind, None)
    if marker.get("kind") != kind:
        raise OutputRefused(f"{given} holds a crispedit {marker.get('kind')}, not a {kind}; choose another folder")
    return Claim(where, kind, marker)


def _refuse_inside_other(where: Location, kind: str) -> None:
    """A target inside another crispedit output would become part of it (and go when it is replaced)."""
    assert where.path is not None
    for parent in where.path.parents:
        legacy = (parent / "manifest.json").is_file() and (parent / "_commits").is_dir()  # a build from before markers
        if (parent / MARKER).is_file() or legacy:
            owner = read_marker(resolve_location(parent)) or {"kind": "build"}
            raise OutputRefused(f"{where.url} is inside the crispedit {owner.get('kind', 'output')} {parent}; "
                                f"a {kind} goes in a folder of its own")


# --- markers ---------------------------------------------------------------------------------


def marker_for(kind: str, *, files: Iterable[str] = (), patterns: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "crispedit_version": __version__, "files": sorted(set(files)), "patterns": list(patterns), **extra}


def owns(marker: dict[str, Any], name: str) -> bool:
    """Whether an output's marker names the file ``name`` (relative, ``/``-separated)."""
    if name == MARKER or name in set(marker.get("files") or ()):
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in marker.get("patterns") or ())


def read_marker(where: Location) -> dict[str, Any] | None:
    try:
        if where.is_local:
            assert where.path is not None
            text = (where.path / MARKER).read_bytes()
        else:
            fs, path = _remote(where)
            text = fs.cat_file(f"{path.rstrip('/')}/{MARKER}")
        data = json.loads(text)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def write_marker(where: str | os.PathLike[str] | Location, marker: dict[str, Any]) -> None:
    from crispedit.core.storage import Output

    Output(resolve_location(where).url).write_text(MARKER, json.dumps(marker, indent=1, sort_keys=True))


def list_files(where: Location, limit: int | None = None) -> list[str]:
    """Relative names of the files (and symlinks, never followed) under a location, sorted; at most ``limit``."""
    found: list[str] = []
    if where.is_local:
        assert where.path is not None
        root = where.path
        if not root.is_dir():
            return []
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            here = Path(folder)
            links = [d for d in dirs if (here / d).is_symlink()]
            dirs[:] = [d for d in dirs if d not in links]
            for name in sorted(files + links):
                found.append((here / name).relative_to(root).as_posix())
                if limit is not None and len(found) >= limit:
                    return found
        return found
    fs, path = _remote(where)
    root = path.rstrip("/")
    try:
        if limit is not None:  # is anything there? one listing of the prefix answers, however big the store is
            fs.invalidate_cache(root)
            top = [n for n in fs.ls(root, detail=False) if n.rstrip("/") != root]
            return sorted(n.rstrip("/")[len(root) :].lstrip("/") for n in top)[:limit]
        names = fs.find(root)
    except FileNotFoundError:
        return []
    found = sorted(n[len(root) :].lstrip("/") for n in names if n.rstrip("/") != root)
    return found[:limit] if limit is not None else found


# --- writing and replacing -------------------------------------------------------------------


@contextmanager
def replace_folder(claim_: Claim, marker: dict[str, Any]) -> Iterator[str]:
    """Yield where to write a whole new output; on success it replaces the old one (see the module docstring).

    ``marker`` is written last, with ``files`` set to what was written. Call
    :meth:`Claim.check_replace` first.
    """
    where = claim_.location
    if where.is_local:
        assert where.path is not None
        target = where.path
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}{NEW_INFIX}{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            yield str(staging)
            written = list_files(resolve_location(staging))
            write_marker(staging, {**marker, "files": written})
            swap_in(staging, target, claim_.previous)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return
    if claim_.previous is not None:
        remove_owned(where, claim_.previous)
    yield where.url
    write_marker(where, {**marker, "files": list_files(where)})


def swap_in(staging: Path, target: Path, previous: dict[str, Any] | None = None) -> None:
    """Put the folder ``staging`` at ``target``; an old output there is set aside first, then its own files
    (those its marker, or ``previous``, names) are removed."""
    if not target.exists():
        os.rename(staging, target)
        return
    old = target.parent / f".{target.name}{OLD_INFIX}{uuid.uuid4().hex[:12]}"
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    _discard(old, previous)


def remove_owned(where: Location, marker: dict[str, Any]) -> list[str]:
    """Delete the files under ``where`` that ``marker`` names (the marker last), then empty folders; returns what went."""
    gone = [name for name in list_files(where) if owns(marker, name) and name != MARKER]
    if where.is_local:
        assert where.path is not None
        for name in gone:
            (where.path / name).unlink(missing_ok=True)
        (where.path / MARKER).unlink(missing_ok=True)
        for folder, _dirs, _files in sorted(os.walk(where.path), key=lambda entry: -len(entry[0])):
            if Path(folder) != where.path and not os.listdir(folder):
                os.rmdir(folder)
    else:
        fs, path = _remote(where)
        for name in [*gone, MARKER]:
            try:
                fs.rm_file(f"{path.rstrip('/')}/{name}")
            except FileNotFoundError:
                pass
    return gone


def _discard(old: Path, previous: dict[str, Any] | None = None) -> None:
    """Remove an output set aside by :func:`swap_in`: its own files only; anything else stays, with a warning."""
    marker = read_marker(resolve_location(old)) or previous or {}
    remove_owned(resolve_location(old), marker)
    try:
        old.rmdir()
    except OSError:
        log.warning("%s still holds files the replaced output did not name; left in place", old)


def _recover(target: Path) -> None:
    """Tidy what an interrupted replacement of ``target`` left beside it."""
    parent = target.parent
    if not parent.is_dir():
        return
    for entry in sorted(parent.glob(f".{_escape(target.name)}{OLD_INFIX}*")):
        if not target.exists():
            os.rename(entry, target)
            log.warning("put back %s, left aside by an interrupted replacement", target)
        else:
            _discard(entry)
    for entry in sorted(parent.glob(f".{_escape(target.name)}{NEW_INFIX}*")):
        shutil.rmtree(entry, ignore_errors=True)


def _escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _remote(where: Location) -> tuple[Any, str]:
    from crispedit.core.storage import split_url

    return split_url(where.url)
