"""The tiny twin of an LLM: a schema-valid answer drawn from a seed, with nothing sent anywhere.

``--tiny`` swaps every model for a random-weight twin of the same class; for a model behind an
endpoint the same idea is an answer of the same SHAPE whose values are random: what a
random-init model constrained to the schema would say. It lets a recipe whose stages always ask
(the judge) build offline, and every value still goes through the answer model's validation,
so a schema a stage cannot parse fails under ``--tiny`` as it would with a real server.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ValidationError

from crispedit.models.twins import TINY_WORDS


def tiny_answer(schema: type[BaseModel], seed: int) -> BaseModel:
    """A validated instance of ``schema`` with values drawn from ``seed``; ValueError when none could be made."""
    json_schema = schema.model_json_schema()
    rng = random.Random(seed)
    value = _draw(json_schema, json_schema.get("$defs", {}), rng)
    try:
        return schema.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        raise ValueError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _draw(node: dict[str, Any], defs: dict[str, Any], rng: random.Random) -> Any:
    if "$ref" in node:
        return _draw(defs[node["$ref"].rsplit("/", 1)[1]], defs, rng)
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return rng.choice(node["enum"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            branches = [b for b in node[key] if b.get("type") != "null"] or node[key]
            return _draw(rng.choice(branches), defs, rng)
    if "allOf" in node:
        return _draw(node["allOf"][0], defs, rng)
    kind = node.get("type")
    if kind == "object":
        return {name: _draw(sub, defs, rng) for name, sub in node.get("properties", {}).items()}
    if kind == "array":
        low = node.get("minItems", 1)
        high = max(low, min(node.get("maxItems", low + 2), low + 2))
        return [_draw(node.get("items", {"type": "string"}), defs, rng) for _ in range(rng.randint(low, high))]
    if kind == "string":
        return _words(rng, node.get("minLength", 0), node.get("maxLength", 80))
    if kind == "integer":
        low, high = _bounds(node, 0, 10)
        return rng.randint(int(low), int(high))
    if kind == "number":
        low, high = _bounds(node, 0.0, 1.0)
        return round(rng.uniform(low, high), 4)
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def _bounds(node: dict[str, Any], low: float, high: float) -> tuple[float, float]:
    lo = node.get("minimum", node.get("exclusiveMinimum", low))
    hi = node.get("maximum", node.get("exclusiveMaximum", max(high, lo)))
    if "exclusiveMinimum" in node:
        lo = lo + 1 if node.get("type") == "integer" else lo + 1e-6
    if "exclusiveMaximum" in node:
        hi = hi - 1 if node.get("type") == "integer" else hi - 1e-6
    return lo, max(lo, hi)


def _words(rng: random.Random, min_length: int, max_length: int) -> str:
    """A few of the kit's words, at least ``min_length`` and at most ``max_length`` characters."""
    text = " ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(2, 6)))
    while len(text) < min_length:
        text += " " + rng.choice(TINY_WORDS)
    return text[:max_length].rstrip() or text[:max_length]
