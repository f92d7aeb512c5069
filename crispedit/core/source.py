"""Sources: where items come from, numbered 0..N-1 in an order that never changes.

A stable numbering is what makes ids, seeds and shard names deterministic, and what lets
a rerun skip exactly the shards that were committed. The kinds are in crispedit.sources
(and crispedit.video for videos); this module is only the contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from crispedit.core.sample import Sample
from crispedit.core.stage import BuildContext, P, StageParams, add_kind, declare
from crispedit.core.storage import is_url


class SourceError(ValueError):
    """The files a source names cannot be read as the recipe says (corrupt, empty, another schema).

    The message is one line that names the file; ``crispedit build`` prints it and exits 2.
    """


class Source(ABC, Generic[P]):
    """The first stage: turns item indices [start, end) into samples (rejects included).

    ``class MySource(Source[MyParams])`` declares its parameters, as a stage does; ``outputs()``
    names the sample fields and ``meta.KEY``s every item arrives with (checked by ``crispedit validate``).
    """

    kind: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    params: P
    name = "source"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declare(cls, {"provides": "define outputs()"})

    def __init__(self, params: P, context: BuildContext) -> None:
        self.params = params
        self.context = context

    def outputs(self) -> set[str]:
        return {"source_image", "source_caption"}

    def locations(self) -> list[str]:
        """The files and folders the source reads (as the recipe names them), so a build never writes over them.

        Taken from the parameters that name inputs; a glob or brace range counts as the folder it
        searches, and a name that is no local path (a Hub dataset id) as nothing.
        """
        found: list[str] = []
        for name in INPUT_PARAMETERS:
            value = getattr(self.params, name, None)
            for item in value if isinstance(value, list | tuple) else [value]:
                if isinstance(item, str | Path) and str(item):
                    text = str(item)
                    cut = min((i for i in (text.find(c) for c in "*?[{") if i >= 0), default=-1)
                    if cut >= 0:
                        text = text[:cut].rsplit("/", 1)[0] or "."
                    if is_url(text) or Path(text).exists():
                        found.append(text)
        return found

    @abstractmethod
    def count(self) -> int:
        """How many items there are. Must be cheap and must not depend on file contents."""

    @abstractmethod
    def load(self, start: int, end: int) -> list[Sample]:
        """One sample per index in [start, end), in order; unreadable items become rejects."""


#: Source parameters that name what a source reads.
INPUT_PARAMETERS = ("folder", "files", "base", "path", "file", "list_file", "parquet", "webdataset", "shards")

T = TypeVar("T", bound=type[Source])
SOURCES: dict[str, type[Source]] = {}


def register_source(cls: T) -> T:
    """Class decorator: make a source available to recipes under its ``kind``."""
    return add_kind(SOURCES, "source", cls)
