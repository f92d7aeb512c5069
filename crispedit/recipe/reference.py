"""docs/reference.md, generated from the code: every recipe key, source kind and stage kind.

The tables come from the pydantic models' field descriptions and the classes' declarations,
so the documentation cannot drift from what a recipe accepts (a test compares the file with
this output). Regenerate with ``python -m crispedit.recipe.reference > docs/reference.md``.
"""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def _type_name(annotation: Any) -> str:
    """A short, readable type: ``int``, ``float | None``, ``'png' \\| 'webp'``, ``list[str]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a!r}`" for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel) and type(value).__module__ == "crispedit.recipe":
        return "see below"
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True) or value.model_dump()
    if isinstance(value, PurePath):
        value = str(value)
    return f"`{value!r}`".replace("|", "\\|")


def params_table(model: type[BaseModel]) -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
    return "\n".join(rows) if len(rows) > 2 else "(no parameters)"


def _first_paragraph(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    module_doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
    text = doc if doc and cls.__doc__ is not None and "__call__" not in doc[:40] else module_doc
    return text.split("\n\n")[0].replace("\n", " ")


def _declared(cls: type, make: Any) -> Any:
    """A stage or source built from its parameters' defaults (required ones left unset), to read what it
    declares; None when its declarations need a parameter the recipe must give."""
    try:
        return make(cls.Params.model_construct())
    except Exception:  # a declaration that reads a required parameter
        return None


def _names(values: Any) -> str:
    return ", ".join(f"`{x}`" for x in sorted(values))


def render() -> str:
    from crispedit.core.stage import BuildContext, FilterStage
    from crispedit.models.terms import TermsDeclaration
    from crispedit.recipe import ExecutionSpec, OutputSpec, Recipe, StageResources
    from crispedit.recipe.catalog import SOURCES, STAGES

    context = BuildContext(recipe_name="reference", fingerprint="", seed=0)
    out = [
        "# Recipe reference",
        "",
        "Generated from the code by `python -m crispedit.recipe.reference` (a test fails when this file",
        "is stale). [recipes.md](recipes.md) explains how the pieces fit together. What a stage reads,",
        "writes and scores is given for its default parameters; some of it depends on the parameters.",
        "",
        "## Top level", "", params_table(Recipe), "",
        "## `output`", "", params_table(OutputSpec), "",
        "## `execution`", "", params_table(ExecutionSpec), "",
        "### `execution.stages.NAME`", "", params_table(StageResources), "",
        "## `terms.MODEL`", "", _first_paragraph(TermsDeclaration), "", params_table(TermsDeclaration), "",
        "## Source kinds", "",
    ]
    for kind in sorted(SOURCES):
        cls = SOURCES[kind]
        source = _declared(cls, lambda params, cls=cls: cls(params, context))
        provides = _names(source.outputs()) if source is not None else "(depends on the parameters)"
        out += [f"### `{kind}`", "", _first_paragraph(cls), "", f"Provides: {provides}.", "", params_table(cls.Params), ""]
    out += ["## Stage kinds", ""]
    for kind in sorted(STAGES):
        cls = STAGES[kind]
        if cls.__module__.startswith("tests."):
            continue
        r = cls.resources
        stage = _declared(cls, lambda params, cls=cls, kind=kind: cls(params, context, kind))
        pool = inspect.getattr_static(cls, "in_actor_pool")
        if isinstance(pool, property):  # depends on the parameters: say what the defaults give
            where = ("model stage (actor pool)" if stage is not None and stage.in_actor_pool else "CPU stage") + " by default"
        else:
            where = "model stage (actor pool)" if pool else "CPU stage"
        facts = [
            ("filter, " if issubclass(cls, FilterStage) else "") + where,
            f"batch size {cls.default_batch_size}",
            f"{r.num_cpus:g} CPU" + (f", {r.num_gpus:g} GPU" if r.num_gpus else "") + (f", {r.memory_gb:g} GiB" if r.memory_gb else ""),
        ]
        if stage is not None:
            for verb, values in (("reads", stage.inputs()), ("writes", stage.outputs()), ("scores", stage.score_columns())):
                if values:
                    facts.append(f"{verb} " + (_names(values) if verb != "scores" else ", ".join(f"`{x}`" for x in values)))
        out += [f"### `{kind}`", "", _first_paragraph(cls), "", "; ".join(facts) + ".", "", params_table(cls.Params), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
