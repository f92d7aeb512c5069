"""Library chatter goes to the build's own log file, not the console (``-v`` keeps it on the console).

transformers, diffusers, huggingface_hub and Ray each log notices a user cannot act on (a processor's
torchvision fall-back, diffusers' "modules that should be kept in float32: []", Ray Data's
experimental-API warnings), once per worker. They are kept, in ``OUT/logs/libraries.log``, because
a real problem sometimes hides among them; only the terminal is spared. Python ``warnings`` are
routed the same way. Worker processes find the file through :data:`LOG_ENV` (Ray workers inherit
the driver's environment), so each appends its own lines to the same file.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crispedit.core.redact import ScrubFilter

#: The loggers whose records go to the file (each library's top logger; children propagate to it).
LIBRARY_LOGGERS = ("transformers", "diffusers", "huggingface_hub", "ray", "py.warnings", "accelerate", "timm")

#: Environment variable naming the log file, so worker processes route their libraries too.
LOG_ENV = "CRISPEDIT_LIBRARY_LOG"

#: Handlers a library had put on its logger before routing replaced them, by logger name.
_DISPLACED: dict[str, list[logging.Handler]] = {}

_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def route_library_logs(path: str | Path, *, configure: bool = False) -> None:
    """Send every library logger's records to ``path`` instead of the terminal (idempotent per path).

    transformers and diffusers add their stderr handler when first imported; ``configure`` imports
    their logging modules first (a worker about to load models pays nothing extra), so the handler
    they add is the one replaced here.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ[LOG_ENV] = str(path)
    if configure:
        for library in ("transformers", "diffusers"):
            if importlib.util.find_spec(library) is not None:
                importlib.import_module(f"{library}.utils.logging")
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        mine = [h for h in logger.handlers if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path]
        if not mine:
            handler = logging.FileHandler(path, encoding="utf-8", delay=True)
            handler.setFormatter(logging.Formatter(_FORMAT))
            handler.addFilter(ScrubFilter())  # a library that logs a URL with a token in it: scrubbed in the file too
            mine = [handler]
        # the libraries' own stderr handlers are set aside (put back by library_log), and nothing
        # propagates to the root's console handler
        _DISPLACED.setdefault(name, []).extend(h for h in logger.handlers if h not in mine and h not in _DISPLACED.get(name, []))
        logger.handlers = mine
        logger.propagate = False
    logging.captureWarnings(True)


def route_from_environment(*, configure: bool = False) -> None:
    """In a worker process (or after ``ray.init`` re-adds Ray's handler): follow the driver's routing."""
    path = os.environ.get(LOG_ENV)
    if path:
        route_library_logs(path, configure=configure)


@contextmanager
def library_log(path: str | Path | None) -> Iterator[None]:
    """Route the libraries to ``path`` for one build, then put the loggers and the environment back."""
    if path is None:
        yield
        return
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate) for name in LIBRARY_LOGGERS}
    before = os.environ.get(LOG_ENV)
    route_library_logs(path)
    try:
        yield
    finally:
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            added = [h for h in _DISPLACED.pop(name, []) if h not in handlers]  # a library imported during the build
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers = [*handlers, *added]
            logger.propagate = propagate and not added
        logging.captureWarnings(False)
        if before is None:
            os.environ.pop(LOG_ENV, None)
        else:
            os.environ[LOG_ENV] = before
