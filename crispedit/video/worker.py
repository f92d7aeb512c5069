"""A killable worker process that mines videos, so a decoder that hangs or crashes costs one video, not the build.

decord can loop forever inside ``get_batch`` holding the GIL when a container declares more
frames than it holds (decord #373, research/video.md §7): no signal, thread or timeout inside
the process can stop it, only killing the process. So decoding and measuring run in a child
process (``python -m crispedit.video.worker``, a fresh interpreter: no fork of a process that
holds threads, no re-import of the parent's ``__main__``), started once and reused for every
video. The parent waits for the child's "decoded" message within ``decode_timeout`` seconds
and for the result within ``analysis_timeout``; past either it kills the child, the video
becomes a reject (``decode timeout``), and the next video starts a new child. A child that
dies (a segfault in a decoder) makes its video a reject too (``decoder crashed``).

On Linux the child asks the kernel to kill it when its parent dies, so a hung decoder never
outlives the build that started it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

#: Seconds a new worker may take to import its modules and say it is ready.
START_TIMEOUT = 120.0


@dataclass
class Outcome:
    """A mined video, or the reason it gives no pairs."""

    mined: Any = None  # crispedit.video.mining.Mined
    reject: str | None = None


class WorkerError(RuntimeError):
    """The worker raised (a bug, not the video's fault); carries the child's traceback."""


class MiningWorker:
    """The parent's handle on one worker process; :meth:`mine` runs one video in it."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.to_child: Connection | None = None
        self.from_child: Connection | None = None
        self.starts = 0

    # -- lifetime -----------------------------------------------------------------------
    def _start(self) -> None:
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        env = dict(os.environ)
        env.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "crispedit.video.worker", str(child_read), str(child_write)],
            pass_fds=(child_read, child_write), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=env, close_fds=True,
        )
        os.close(child_read)
        os.close(child_write)
        self.to_child = Connection(parent_write, readable=False)
        self.from_child = Connection(parent_read, writable=False)
        self.starts += 1
        self.to_child.send({"sys_path": list(sys.path)})
        message = self._receive(START_TIMEOUT)
        if message is None or message[0] != "ready":
            detail = message[1] if message and message[0] == "error" else f"exit code {self.process.poll()}"
            self.kill()
            raise WorkerError(f"the video worker did not start: {detail}")

    def kill(self) -> None:
        """Stop the child now, whatever it is doing."""
        process, self.process = self.process, None
        for connection in (self.to_child, self.from_child):
            if connection is not None:
                try:
                    connection.close()
                except OSError:
                    pass
        self.to_child = self.from_child = None
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()

    def close(self) -> None:
        """Ask the child to finish, and kill it if it does not within a second."""
        if self.process is not None and self.to_child is not None:
            try:
                self.to_child.send(None)
                self.process.wait(timeout=1.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def __del__(self) -> None:
        try:
            self.kill()
        except Exception:
            pass

    # -- one video ----------------------------------------------------------------------
    def mine(self, path: str, settings: dict[str, Any], reader_ref: str) -> Outcome:
        """Mine the video at ``path``; a timeout or a crash is a reject, a bug raises WorkerError."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        assert self.to_child is not None
        decode_timeout = float(settings["decode_timeout"])
        analysis_timeout = float(settings["analysis_timeout"])
        self.to_child.send(("mine", path, settings, reader_ref))
        began = time.monotonic()
        message = self._receive(START_TIMEOUT)  # the reader's module is imported: not the video's time
        if message is None:
            return self._lost(f"decode timeout: the worker did not load reader {reader_ref} within {START_TIMEOUT:g} s")
        if message[0] == "started":
            message = self._receive(decode_timeout)
        if message is None:
            return self._lost(f"decode timeout: no result after {decode_timeout:g} s (decode_timeout); the decoder was stopped")
        if message[0] == "decoded":
            message = self._receive(analysis_timeout)
            if message is None:
                return self._lost(f"analysis timeout: no result {analysis_timeout:g} s after decoding (analysis_timeout); the worker was stopped")
        kind = message[0]
        if kind == "mined":
            return Outcome(mined=message[1])
        if kind == "rejected":
            return Outcome(reject=message[1])
        if kind == "crashed":
            return Outcome(reject=f"decoder crashed: {message[1]} after {time.monotonic() - began:.1f} s")
        raise WorkerError(f"the video worker failed on {path}:\n{message[1]}")

    def _receive(self, timeout: float) -> tuple[Any, ...] | None:
        """The child's next message, ("crashed", why) if it died, None if it said nothing in time."""
        assert self.from_child is not None and self.process is not None
        if not self.from_child.poll(timeout):
            return None
        try:
            return self.from_child.recv()
        except (EOFError, OSError):
            code = self.process.wait()
            self.kill()
            return ("crashed", f"the worker process died (exit code {code})")

    def _lost(self, reason: str) -> Outcome:
        self.kill()
        return Outcome(reject=reason)


# --- the child ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def serve(read_fd: int, write_fd: int) -> None:
    """The child's loop: one job at a time until the parent sends None or goes away."""
    _die_with_parent()
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        hello = inbox.recv()
        for entry in hello.get("sys_path", []):
            if entry not in sys.path:
                sys.path.append(entry)
        import cv2

        from crispedit.video.mining import Rejected, mine
        from crispedit.video.readers import load_reader
        from crispedit.video.settings import MiningSettings

        cv2.setNumThreads(1)  # one declared CPU per worker; also keeps DIS and RANSAC deterministic
    except BaseException:
        outbox.send(("error", traceback.format_exc()))
        return
    outbox.send(("ready",))
    while True:
        try:
            job = inbox.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        _, path, settings, reader_ref = job
        try:
            reader = load_reader(reader_ref)(threads=int(settings.get("threads", 1)))
            outbox.send(("started",))
            mined = mine(path, reader, MiningSettings.model_validate(settings), decoded=lambda info: outbox.send(("decoded", info)))
            outbox.send(("mined", mined))
        except Rejected as rejected:
            outbox.send(("rejected", str(rejected)))
        except Exception:
            outbox.send(("error", traceback.format_exc()))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
