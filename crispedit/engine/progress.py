"""A rich progress bar over shards, or nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Progress:
    """A rich progress bar over shards, or nothing."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label
        self.bar: Any = None

    def __enter__(self) -> Callable[[dict[str, Any]], None]:
        rows = rejects = 0
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
                TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            )
            self.bar.__enter__()
            task = self.bar.add_task(self.label, total=self.total, counts="")

        def advance(marker: dict[str, Any]) -> None:
            nonlocal rows, rejects
            rows += marker["rows"]
            rejects += marker["rejects"]
            if self.bar is not None:
                self.bar.update(task, advance=1, counts=f"{rows} rows, {rejects} rejects")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
