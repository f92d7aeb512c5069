"""What every stage that asks an LLM shares: the client per worker, offline answers, images as data URLs.

``instruct``, ``video_caption`` and ``judge`` (and ``crispedit eval``'s judge) use the one
client of :mod:`crispedit.models.llm`. :class:`LLMStage` is the scaffolding around it: a
stage with a ``template`` backend, or any backend under ``--tiny``, answers offline (a CPU
step, no client); otherwise it runs in an actor pool and builds its client once in ``setup()``.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("crispedit")


def image_url(image: np.ndarray | Any, max_side: int, image_format: str = "png", quality: int = 90) -> str:
    """An RGB array or PIL image as a data URL (the OpenAI chat ``image_url`` part), scaled down (never up).

    The long side is scaled to ``max_side`` with a Lanczos filter; PNG is lossless, JPEG is
    smaller for photos at ``quality``.
    """
    from PIL import Image

    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB")
    if max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if image_format == "jpeg":
        picture.save(buffer, format="JPEG", quality=quality)
        mime = "image/jpeg"
    else:
        picture.save(buffer, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class LLMStage:
    """Mixin for a :class:`~crispedit.core.stage.Stage` whose params have ``llm`` (and maybe ``backend``).

    A stage with a ``backend`` parameter answers offline for ``backend: template`` and for any
    backend under ``--tiny``; one without (the judge) always asks its client, which under ``--tiny``
    is the offline tiny model (``llm.model: tiny``, crispedit.models.tiny_llm). The client is built once per
    worker in ``setup()`` and never pickled (an actor rebuilds it).
    """

    client: Any = None
    _warned_offline: bool = False

    @property
    def offline(self) -> bool:
        backend = getattr(self.params, "backend", None)  # type: ignore[attr-defined]
        return backend is not None and (backend == "template" or self.context.tiny)  # type: ignore[attr-defined]

    @property
    def in_actor_pool(self) -> bool:
        """Only a live LLM backend holds a client (event loop, connections, cache) worth keeping per actor;
        offline answers are a CPU step."""
        return not self.offline

    def llm_cache_dir(self) -> Path | None:
        """Where answers are cached: the build's cache (so a rerun asks nothing twice)."""
        return self.context.cache_dir  # type: ignore[attr-defined]

    def setup(self) -> None:
        if not self.offline and self.client is None:
            from crispedit.models.llm import LLMClient

            assert self.params.llm is not None  # type: ignore[attr-defined]
            self.client = LLMClient(self.params.llm, self.llm_cache_dir(), stage=self.name)  # type: ignore[attr-defined]

    def llm_model_ids(self, key: str = "llm") -> dict[str, str]:
        """The model an LLM backend asks, for provenance: its endpoint without credentials; none for a template."""
        from crispedit.core.redact import scrub_url

        llm = getattr(self.params, "llm", None)  # type: ignore[attr-defined]
        if getattr(self.params, "backend", None) != "openai" or llm is None:  # type: ignore[attr-defined]
            return {}
        if self.context.tiny:  # type: ignore[attr-defined]
            return {key: "template (tiny)"}
        return {key: f"{llm.model} at {scrub_url(llm.base_url)}"}

    def warn_offline(self, what: str) -> None:
        """Say once per worker that ``--tiny`` answers offline an LLM backend would have been asked."""
        if getattr(self.params, "backend", None) == "openai" and not self._warned_offline:  # type: ignore[attr-defined]
            log.warning("stage %s: --tiny: %s; no request is sent", self.name, what)  # type: ignore[attr-defined]
            self._warned_offline = True

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["client"] = None
        return state
