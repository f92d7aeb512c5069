"""The one search for bundled presets: filter chains, judge prompts and trainer configs.

They ship inside the package (``crispedit/presets/``, package data), so an installed wheel
finds them as a checkout does. A name is looked up in this order:

1. an existing file, as given (``filters/ip2p.yaml``, ``my/chain.yaml``, ``configs/tiny.yaml``);
2. ``NAME`` in the folders the caller names (a recipe's ``filters/`` beside it, one level
   up, the working directory's), so a project's own chains win over the bundled ones;
3. the bundled preset of that name (``basic``, ``ip2p``, ``judge_semantics.txt``, ``tiny``):
   a path that does not exist falls back to the preset named by its file name, so the
   spellings of a checkout (``--filters filters/ip2p.yaml``, ``--config configs/mgt/tiny.yaml``)
   work from anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

#: Where the bundled presets live (package data).
BUNDLED = Path(__file__).resolve().parents[1] / "presets"

Kind = Literal["filters", "prompts", "mgt", "judges"]
#: kind -> (folder under BUNDLED, the suffix a bare name gets)
_KINDS: dict[str, tuple[str, str]] = {"filters": ("filters", ".yaml"), "prompts": ("filters", ".txt"), "mgt": ("mgt", ".yaml"), "judges": ("judges", ".yaml")}


class PresetNotFound(FileNotFoundError):
    """No such file, and no preset of that name where presets are looked for."""


def bundled(kind: Kind) -> list[str]:
    """The names of the bundled presets of a kind (``basic``, ``ip2p``, ...)."""
    folder, suffix = _KINDS[kind]
    return sorted(p.name.removesuffix(suffix) for p in (BUNDLED / folder).glob(f"*{suffix}"))


def find_preset(kind: Kind, name: str | os.PathLike[str], folders: Iterable[Path] = (), *, paths: bool = True) -> Path:
    """The file ``name`` means: an existing path (unless ``paths`` is off: a recipe names chains by name
    only), else ``NAME`` in ``folders``, else the bundled preset."""
    given = Path(name)
    if paths and given.is_file():
        return given
    folder, suffix = _KINDS[kind]
    file = given.name if given.suffix else f"{given.name}{suffix}"
    searched = list(folders) + [BUNDLED / folder]
    for place in searched:
        if (place / file).is_file():
            return place / file
    known = ", ".join(bundled(kind))
    raise PresetNotFound(f"no {kind} preset {str(name)!r}: no such file, nor {file} in {', '.join(map(str, searched))} (bundled: {known})")
