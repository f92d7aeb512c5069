"""Loading a model a spec names: the tiny twin, or the real weights checked against their pin.

Apart from :mod:`crispedit.models.spec` (what a spec is) because the check after a Hub load
needs :mod:`crispedit.models.hub`, which itself describes specs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crispedit.models.hub import check_loaded
from crispedit.models.spec import TWINS, ModelSpec


def load_model(spec: ModelSpec, twin: str, load: Callable[..., Any], seed: int = 0) -> Any:
    """Build the tiny twin when the spec says so, else ``load(id, revision=...)``.

    ``load`` is the class's own ``from_pretrained`` (or any callable with that signature),
    so real weights come through the libraries' loaders, which read safetensors. A Hub load is
    then checked: the snapshot the cache resolved the revision to must be the pinned commit.
    """
    if spec.is_tiny:
        if twin not in TWINS:
            raise KeyError(f"no tiny twin registered as {twin!r}; known: {sorted(TWINS)}")
        return TWINS[twin](seed)
    kwargs: dict[str, Any] = {}
    if spec.revision:
        kwargs["revision"] = spec.revision
    loaded = load(spec.id, **kwargs)
    check_loaded(spec)  # the commit the cache resolved the pin to: refused when it is another one
    return loaded
