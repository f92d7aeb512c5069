"""Path containment: every file crispedit writes must stay inside the directory the user named."""

from __future__ import annotations

import os
from pathlib import Path


class UnsafePathError(ValueError):
    """A path would leave the directory it must stay in."""


def contained(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Resolve ``path`` against ``root`` and refuse it unless it stays under ``root``.

    Symlinks are resolved first, so a link that points outside the root is refused too.
    """
    root_p = Path(root).resolve()
    candidate = Path(path)
    full = (candidate if candidate.is_absolute() else root_p / candidate).resolve()
    if full != root_p and root_p not in full.parents:
        raise UnsafePathError(f"{path!s} escapes {root_p}")
    return full


def safe_name(name: str) -> str:
    """A file-name component from free text; refuses separators and dot-names outright."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
        raise UnsafePathError(f"not a plain file name: {name!r}")
    return name
