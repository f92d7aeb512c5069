"""Per-stage counts and time, computed from the samples themselves and summed over shards."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from crispedit import __version__
from crispedit.core.sample import Sample


@dataclass
class StageStats:
    """Counts and time for one stage over some samples; summed over shards for the summary."""

    seen: int = 0
    passed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    usage: Counter[str] = field(default_factory=Counter)

    def add(self, other: StageStats) -> None:
        self.seen += other.seen
        self.passed += other.passed
        self.rejected.update(other.rejected)
        self.seconds += other.seconds
        self.usage.update(other.usage)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seen": self.seen,
            "passed": self.passed,
            "rejected": dict(sorted(self.rejected.items())),
            "seconds": round(self.seconds, 4),
        }
        if self.usage:
            out["usage"] = {k: round(v, 6) for k, v in sorted(self.usage.items())}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageStats:
        return cls(
            seen=int(data["seen"]),
            passed=int(data["passed"]),
            rejected=Counter(data.get("rejected", {})),
            seconds=float(data.get("seconds", 0.0)),
            usage=Counter(data.get("usage", {})),
        )


def stage_stats(samples: list[Sample]) -> dict[str, StageStats]:
    """Per-stage stats of a shard from its final samples' traces, in pipeline order.

    ``seen`` counts inputs, ``passed`` the outputs that left the stage alive (children
    included), ``rejected`` the outputs the stage refused, by reason category.
    """
    stats: dict[str, StageStats] = {}
    for sample in samples:
        for stage, seconds, is_input in sample.trace:
            entry = stats.setdefault(stage, StageStats())
            entry.seconds += seconds
            entry.seen += int(is_input)
            refused_here = sample.reject is not None and sample.reject.stage == stage
            if refused_here:
                entry.rejected[sample.reject.category] += 1  # type: ignore[union-attr]
            else:
                entry.passed += 1
        for stage, counters in sample.usage.items():
            stats.setdefault(stage, StageStats()).usage.update(counters)
    return stats


def summarize(markers: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over committed shards: rows, rejects, and per stage seen/passed/drops/seconds."""
    stages: dict[str, StageStats] = {}
    order: list[str] = []
    for marker in markers:
        for data in marker.get("stages", []):
            name = data["name"]
            if name not in stages:
                stages[name] = StageStats()
                order.append(name)
            stages[name].add(StageStats.from_dict(data))
    return {
        "shards": len(markers),
        "rows": sum(m["rows"] for m in markers),
        "rejects": sum(m["rejects"] for m in markers),
        "stages": {name: stages[name].to_dict() for name in order},
        "crispedit_version": __version__,
    }
