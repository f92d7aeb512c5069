"""Three kinds of failure, kept apart on purpose.

* the sample's fault (a corrupt file, an answer that is not JSON): a reject with a reason
  (``Sample.fail``), never an exception that leaves the stage;
* not the sample's fault (a server down, out of memory): :class:`TransientError`. The
  shard is left uncommitted and a rerun builds it;
* the stage's fault (a bug raised on most samples): the :class:`Breaker` trips,
  :class:`StageBroken` stops the build instead of committing a shard full of rejects.
"""

from __future__ import annotations

from dataclasses import dataclass


class TransientError(RuntimeError):
    """Not the sample's fault: a server unreachable after retries, out of memory.

    Raised by a stage, it leaves the sample's shard uncommitted, so a rerun builds it;
    it never becomes a committed reject.
    """


class StageBroken(RuntimeError):
    """The breaker tripped: one stage failed most samples with the same exception type.

    That is a bug or a broken setup, not bad samples; the build stops and keeps the traceback.
    """

    def __init__(self, stage: str, message: str, trace: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.trace = trace


@dataclass(frozen=True)
class Breaker:
    """When failures of one exception type mean a broken stage rather than bad samples."""

    min_failures: int = 3
    fraction: float = 0.5

    def tripped(self, failures: int, seen: int) -> bool:
        return seen >= 2 and failures >= min(self.min_failures, seen) and failures >= self.fraction * seen


def describe_error(error: BaseException) -> str:
    """One line a user can act on, with the exception type (message cut to a sane length)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA or host OOM: the machine's fault, not the sample's."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
