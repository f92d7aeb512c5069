"""Where a path or URL really points: every spelling resolved once, before anything is read or written.

A location can be written many ways: ``out``, ``./out``, ``/abs/out``, ``sub/../out``, a
symlink, ``file:///abs/out``, ``file:out``, ``local://out``, ``~/out``, and fsspec chains
such as ``simplecache::file:///abs/out``. Containment checks that look at the text (does
it start with ``/``? does it contain ``://``?) can each be walked around by another
spelling, so every check in crispedit compares :class:`Location` objects made here
instead: a local location is its real path on this machine (symlinks resolved), whatever
protocol prefix named it; a remote one is its URL split into a protocol and path segments.

An fsspec chain is judged by its last link, the storage it actually reads
(``zip://member::file:///data/a.zip`` reads the local file ``/data/a.zip``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath

from crispedit.core.paths import UnsafePathError

#: fsspec protocols that name this machine's disk (``file://x``, ``file:x``, ``local://x``).
LOCAL_PREFIXES = ("file://", "local://", "file:", "local:")


@dataclass(frozen=True)
class Location:
    """A resolved location: a real local path, or a remote URL (protocol plus path segments)."""

    #: The text as given.
    given: str
    #: The real path on this machine (symlinks resolved), for a local location; None for a remote one.
    path: Path | None
    #: Remote only: the protocol (``s3``, ``https``...) and the path after ``://``.
    protocol: str = ""
    remote_path: str = ""
    #: The text was an fsspec chain (``a::b``); the location is its last link.
    chained: bool = False

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def url(self) -> str:
        """The canonical spelling: the real path for a local location, ``protocol://path`` otherwise."""
        return str(self.path) if self.path is not None else f"{self.protocol}://{self.remote_path}"

    def segments(self) -> tuple[str, ...]:
        if self.path is not None:
            return self.path.parts
        return tuple(s for s in self.remote_path.split("/") if s)

    def inside(self, other: Location) -> bool:
        """Whether this location is ``other`` or somewhere below it (on the same storage).

        A remote path with a ``..`` segment is inside nothing: object stores take the text
        literally, so no prefix check can vouch for it.
        """
        if self.is_local != other.is_local or self.protocol != other.protocol:
            return False
        mine, theirs = self.segments(), other.segments()
        if not self.is_local and (".." in mine or ".." in theirs):
            return False
        return mine[: len(theirs)] == theirs

    def same(self, other: Location) -> bool:
        """The same place, however each was spelled."""
        return self.inside(other) and other.inside(self)

    def overlaps(self, other: Location) -> bool:
        """One of the two is inside the other (or they are the same place)."""
        return self.inside(other) or other.inside(self)

    def __str__(self) -> str:
        return self.url


def resolve_location(text: str | os.PathLike[str] | Location, base: str | os.PathLike[str] | Location | None = None) -> Location:
    """Resolve any spelling of a path or URL to a :class:`Location`.

    A relative local path is taken relative to ``base`` (a directory; default the working
    directory); with a remote ``base`` it is joined to that URL. A ``pathlib`` path is a
    local path whatever its characters (a file may be named ``a::b`` or ``file:x``); only
    text is read as a URL. Raises UnsafePathError for text that cannot name a location at
    all (NUL bytes, a symlink loop).
    """
    if isinstance(text, Location):
        return text
    given = os.fspath(text)
    if "\x00" in given:
        raise UnsafePathError(f"a location with a NUL byte: {given!r}")
    if isinstance(text, PurePath):
        return _local(given, given, base, chained=False)
    chained = "::" in given
    link = given.rsplit("::", 1)[-1] if chained else given
    protocol, rest = _split_protocol(link)
    if protocol is None:  # this machine's disk
        return _local(given, rest, base, chained)
    return Location(given, None, protocol, rest, chained)


def _local(given: str, rest: str, base: str | os.PathLike[str] | Location | None, chained: bool) -> Location:
    if rest.startswith("~"):
        rest = os.path.expanduser(rest)
    if not os.path.isabs(rest):
        where = resolve_location(base) if base is not None else None
        if where is not None and not where.is_local:
            joined = f"{where.remote_path.rstrip('/')}/{rest}" if rest not in ("", ".") else where.remote_path
            return Location(given, None, where.protocol, joined, chained)
        rest = os.path.join(str(where.path) if where is not None else os.getcwd(), rest)
    try:
        real = Path(rest).resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise UnsafePathError(f"{given}: {error}") from None
    return Location(given, real, "", "", chained)


def _split_protocol(link: str) -> tuple[str | None, str]:
    """(protocol, rest); protocol None for this machine's disk, however the local file system was named."""
    for prefix in LOCAL_PREFIXES:
        if link.startswith(prefix):
            return None, link[len(prefix) :] or "."
    if "://" in link:
        protocol, _, rest = link.partition("://")
        if protocol and all(c.isalnum() or c in "+-._" for c in protocol):
            return protocol, rest
    return None, link
