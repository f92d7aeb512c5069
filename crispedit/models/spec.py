"""Model loading by id, and the tiny random-init twins that ``--tiny`` and the tests use.

A twin is a model of the SAME class as the real one, built from a small config with
random weights (the way diffusers and transformers test themselves), so a recipe's code
path runs end to end on a laptop without downloading anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from crispedit.models.pins import pinned

TINY_ID = "tiny"


class ModelSpec(BaseModel):
    """Where a model comes from: a hub id or local path, and a pinned revision."""

    model_config = ConfigDict(extra="forbid")

    id: str
    revision: str | None = None
    dtype: str = "float32"

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """Accept the shorthand ``model: org/name`` for ``model: {id: org/name}``."""
        return {"id": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _pin(self) -> ModelSpec:
        """A known Hub id without a revision gets its verified pin (crispedit.models.pins)."""
        if self.revision is None and not self.is_tiny:
            self.revision = pinned(self.id, None)
        return self

    @property
    def is_tiny(self) -> bool:
        return self.id == TINY_ID or self.id.startswith(f"{TINY_ID}:")

    def describe(self) -> str:
        return f"{self.id}@{self.revision}" if self.revision else self.id


TwinFactory = Callable[[int], Any]
TWINS: dict[str, TwinFactory] = {}


def register_twin(name: str) -> Callable[[TwinFactory], TwinFactory]:
    """Decorator: register the factory that builds the tiny twin called ``name`` from a seed."""

    def wrap(factory: TwinFactory) -> TwinFactory:
        TWINS[name] = factory
        return factory

    return wrap


def tiny_swap(value: Any) -> Any:
    """Return ``value`` with every model spec inside it replaced by the tiny id.

    Walks plain data (dicts and lists from the recipe YAML): a dict is a model spec when it
    has an ``id`` key and sits under a key named ``model`` or ending in ``_model``.
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if _is_model_key(key) and isinstance(item, dict) and "id" in item:
                out[key] = {**item, "id": TINY_ID, "revision": None}
            elif _is_model_key(key) and isinstance(item, str):
                out[key] = TINY_ID
            else:
                out[key] = tiny_swap(item)
        return out
    if isinstance(value, list):
        return [tiny_swap(item) for item in value]
    return value


def _is_model_key(key: object) -> bool:
    return isinstance(key, str) and (key == "model" or key.endswith("_model"))
