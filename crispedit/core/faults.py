"""Crash-test hook: kill this process at a named point of the commit protocol, on request.

``CRISPEDIT_FAULT=NAME:N`` SIGKILLs the process the N-th time it reaches NAME, after
appending NAME:N to ``CRISPEDIT_FAULT_LOG`` (when set), so a test can assert the kill
really happened where it meant instead of racing the build with a poll loop. Unset (always,
outside tests), it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_HITS: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("CRISPEDIT_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    if _HITS[name] == int(nth or 1):
        log_path = os.environ.get("CRISPEDIT_FAULT_LOG")
        if log_path:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(f"{name}:{_HITS[name]}\n")
        os.kill(os.getpid(), signal.SIGKILL)
