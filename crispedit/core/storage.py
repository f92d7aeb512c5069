"""Where outputs live and where sources are read from: a local directory or any fsspec URL.

The commit protocol needs one property from storage: a reader sees either nothing or the
whole file under its final name. On a local disk that is a temporary file, fsync and a
rename; object stores (S3, GCS, Azure) have no cheap rename but make an object visible only
once its single PUT (or multipart upload) completes, so there the final name is written
directly and never renamed. Everything else here is a thin, path-checked wrapper around
fsspec so that ShardStore, ``inspect`` and the trainer do not care which kind they get.

Credentials never pass through here by value: s3fs/gcsfs read them from the environment
(AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...) or from ``storage_options`` the
caller builds from environment variables.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crispedit.core.faults import fault_point
from crispedit.core.locations import resolve_location
from crispedit.core.paths import UnsafePathError, contained, safe_name

#: Prefix of the hidden temporary files local writes go through (invisible to ``datasets``).
TMP_PREFIX = ".tmp-"

Bytes = bytes | bytearray | memoryview


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for locations fsspec must open: remote URLs and fsspec chains.

    Every spelling of this machine's disk (a path, ``file://``, ``file:``, ``local://``) is local.
    """
    text = os.fspath(location)
    return "::" in text or not resolve_location(text).is_local


def split_url(location: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(filesystem, path inside it) for a local path or an fsspec URL; local paths resolved by :func:`resolve_location`."""
    from fsspec.core import url_to_fs

    text = os.fspath(location)
    if not is_url(text):
        text = str(resolve_location(text).path)
    return url_to_fs(text, **dict(storage_options or {}))


def open_input(url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None, **open_kwargs: Any) -> Any:
    """Open a source file (local path or URL) for binary reading; use it as a context manager."""
    fs, path = split_url(url, storage_options)
    return fs.open(path, "rb", **open_kwargs)


#: Default bound on one input file read whole (an image, a caption list, a recipe's text file).
DEFAULT_MAX_BYTES = 256 * 1024**2


class InputRefused(ValueError):
    """An input that is not read: a device, a FIFO, a directory, or more bytes than allowed.

    The message is a reject reason (``category: detail``).
    """


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _check_regular(mode: int, size: int, name: str, max_bytes: int) -> None:
    for test, kind in _KINDS:
        if test(mode):
            raise InputRefused(f"unreadable file: {name} is {kind}, not a regular file")
    if not stat.S_ISREG(mode):
        raise InputRefused(f"unreadable file: {name} is not a regular file")
    if size > max_bytes:
        raise InputRefused(f"file too large: {name} holds {size} bytes, more than max_bytes ({max_bytes})")


def read_input(location: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES,
               storage_options: Mapping[str, Any] | None = None) -> bytes:
    """A whole input file, local or remote, refused (InputRefused) when it is not a regular file or holds more than ``max_bytes``.

    A local file is checked before it is opened (opening a FIFO would block, a device would
    never end) and again on the open handle, and at most ``max_bytes + 1`` bytes are ever
    read, so a file that grows meanwhile cannot exhaust memory either. Raises OSError when
    the file cannot be read at all.
    """
    text = os.fspath(location)
    where = resolve_location(location)
    if where.is_local and where.path is not None:
        path = str(where.path)
        info = os.stat(path)
        _check_regular(info.st_mode, info.st_size, text, max_bytes)
        if not where.chained:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                _check_regular(info.st_mode, info.st_size, text, max_bytes)
                data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise InputRefused(f"file too large: {text} holds more than max_bytes ({max_bytes})")
            return data
    fs, path = split_url(text, storage_options)
    with fs.open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputRefused(f"file too large: {text} holds more than max_bytes ({max_bytes})")
    return data


def relative_key(*parts: str) -> str:
    """Join path parts into a clean relative key ("data/x.parquet"), refusing anything that could escape.

    Empty parts and "." are skipped; "..", absolute paths, backslashes and NUL bytes are refused,
    whatever the storage, because object stores do not normalise them the way a disk would.
    """
    names: list[str] = []
    for part in parts:
        text = os.fspath(part)
        if text.startswith("/") or "\\" in text:
            raise UnsafePathError(f"not a relative path: {text!r}")
        for name in text.split("/"):
            if name in ("", "."):
                continue
            names.append(safe_name(name))
    return "/".join(names)


class Output:
    """One output location: a local directory or an object-store prefix such as ``s3://bucket/run``.

    Every method takes keys relative to the root (``"data/train-00000000-00000256.parquet"``),
    checked by :func:`relative_key`; on a local disk they must also stay inside the root after
    symlinks are resolved.
    """

    def __init__(self, location: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        where = resolve_location(location)
        if where.chained:
            raise UnsafePathError(f"{os.fspath(location)}: an output is a folder or a plain URL, not an fsspec chain")
        if not where.is_local and ".." in where.segments():
            raise UnsafePathError(f"{os.fspath(location)}: '..' in an object-store URL")
        self.location = where
        self.fs, root = split_url(where.url, self.storage_options)
        self.is_local: bool = _is_local(self.fs)
        self.root: str = root.rstrip("/") if not self.is_local else str(Path(root))
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.url: str = self.root if self.is_local else f"{protocol}://{self.root}"

    def __repr__(self) -> str:
        return f"Output({self.url!r})"

    # names -----------------------------------------------------------------------------
    def join(self, *parts: str) -> str:
        """The checked relative key for ``parts`` (what every other method takes)."""
        key = relative_key(*parts)
        if self.is_local:
            contained(self.root, key or ".")  # refuses a symlink inside the root that points out of it
        return key

    def full_path(self, key: str = "") -> str:
        """The path of ``key`` inside the filesystem (no protocol), for fsspec or pyarrow calls."""
        checked = self.join(key)
        return f"{self.root}/{checked}" if checked else self.root

    def url_of(self, key: str = "") -> str:
        """``key`` as a URL or absolute path a user or ``datasets`` can open (with ``storage_options``)."""
        checked = self.join(key)
        return f"{self.url}/{checked}" if checked else self.url

    # reading ---------------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        """The whole object. Raises FileNotFoundError if it does not exist."""
        path = self.full_path(key)
        if self.is_local:
            return Path(path).read_bytes()
        return self.fs.cat_file(path)

    def size(self, key: str) -> int | None:
        """Size in bytes of the file ``key``, or None when there is no such file (never a cached answer)."""
        path = self.full_path(key)
        if self.is_local:
            try:
                stat = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            return stat.st_size if os.path.isfile(path) else None
        self._forget(path)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def exists(self, key: str) -> bool:
        """Whether a file ``key`` exists (directories and prefixes do not count)."""
        return self.size(key) is not None

    def list(self, prefix: str = "", pattern: str = "*") -> list[str]:
        """Keys of the files directly under ``prefix`` whose name matches ``pattern``, sorted.

        Hidden names (".tmp-...") match only a pattern that starts with a dot.
        """
        directory = self.full_path(prefix)
        if self.is_local:
            try:
                names = [entry.name for entry in os.scandir(directory) if entry.is_file()]
            except (FileNotFoundError, NotADirectoryError):
                return []
        else:
            self._forget(directory)
            try:
                entries = self.fs.ls(directory, detail=True)
            except FileNotFoundError:
                return []
            names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file"]
        hidden_ok = pattern.startswith(".")
        keys = [relative_key(prefix, n) for n in names if fnmatch.fnmatchcase(n, pattern) and (hidden_ok or not n.startswith("."))]
        return sorted(keys)

    # writing ---------------------------------------------------------------------------
    def write_bytes(self, key: str, data: Bytes) -> int:
        """Publish ``data`` under ``key`` all at once; readers never see part of it. Returns its size.

        Local: a hidden temporary beside the target, fsync, ``os.replace``, fsync of the directory.
        Object store: one upload to the final name (no rename exists there, and none is needed).
        """
        path = self.full_path(key)
        if not self.join(key):
            raise UnsafePathError("cannot write the output root itself")
        if self.is_local:
            _atomic_local_write(Path(path), data)
        else:
            payload = data if isinstance(data, bytes) else bytes(data)
            self.fs.pipe_file(path, payload)
            self._forget(path)
        return len(data) if not isinstance(data, memoryview) else data.nbytes

    def write_text(self, key: str, text: str) -> int:
        """``write_bytes`` of UTF-8 text."""
        return self.write_bytes(key, text.encode("utf-8"))

    def remove(self, key: str) -> None:
        """Delete the file ``key`` if it exists."""
        path = self.full_path(key)
        if not self.join(key):
            raise UnsafePathError("refusing to remove the output root")
        if self.is_local:
            Path(path).unlink(missing_ok=True)
            return
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        self._forget(path)

    def remove_temporaries(self, *prefixes: str) -> int:
        """Delete hidden temporaries a killed local writer left under ``prefixes`` (default: the root).

        Object stores never hold temporaries: their writes go straight to the final name.
        """
        if not self.is_local:
            return 0
        stray = [key for prefix in (prefixes or ("",)) for key in self.list(prefix, f"{TMP_PREFIX}*")]
        for key in stray:
            self.remove(key)
        return len(stray)

    def _forget(self, path: str) -> None:
        """Drop fsspec's listing cache for ``path`` and its parent: other processes write here too."""
        invalidate = getattr(self.fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate(path)
            invalidate(path.rsplit("/", 1)[0])


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _atomic_local_write(path: Path, data: Bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point("temporary-written")
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        tmp.unlink(missing_ok=True)
