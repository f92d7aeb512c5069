"""Edit taxonomies and word lists as data files a user can read, copy and extend.

A taxonomy is a YAML file of categories, each with a definition (sent to the LLM), seed
examples (few-shot prompts) and how the offline template backend writes it. Three ship
with crispedit: ``crispedit2m`` (CrispEdit-2M's seven categories), ``editworld`` (EditWorld's
seven world-instruction categories) and ``emu_edit`` (Emu Edit's tasks). A recipe names one
of them or gives the path of its own file.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Taxonomies shipped as package data, by the name a recipe uses.
BUILTIN = ("crispedit2m", "editworld", "emu_edit")

#: How the template backend writes a category offline: a vocabulary operation, or a seed example.
TemplateOp = Literal["add", "remove", "replace", "recolour", "retexture", "background", "style", "example"]

#: Operations that edit one named object found in (or put into) the caption.
REGION_OPS = ("add", "remove", "replace", "recolour", "retexture")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedExample(Strict):
    """One edit specification written by hand: a few-shot example and an offline answer."""

    source_caption: str = Field(description="the image before the edit")
    instruction: str = Field(description="the edit, as a person would ask for it")
    target_caption: str = Field(description="the image after the edit")
    edit_objects: list[str] = Field(default_factory=list, description="objects the edit changes; empty for the whole image")
    inverse_instruction: str | None = Field(None, description="the instruction that undoes the edit")


class Category(Strict):
    definition: str = Field(description="what edits of this category do; sent to the LLM")
    region: bool = Field(False, description="the edit changes named objects, so an answer must list them in edit_objects")
    template: TemplateOp = Field("example", description="how the template backend writes this category offline")
    group: str | None = Field(None, description="a family of categories, for documentation")
    examples: list[SeedExample] = Field(min_length=1, description="seed examples: few-shot prompts and offline answers")


class Taxonomy(Strict):
    name: str = Field(description="the name recipes use")
    description: str = Field(description="one line")
    source: str = Field(description="where the categories come from")
    categories: dict[str, Category] = Field(min_length=1, description="categories by the name written to the `task` column")

    @field_validator("categories")
    @classmethod
    def _names(cls, categories: dict[str, Category]) -> dict[str, Category]:
        for name in categories:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"a category name is letters, digits, '_' or '-': {name!r}")
        return categories


class Vocabulary(Strict):
    """Word lists for offline edits (see vocabulary.yaml)."""

    objects: dict[str, list[str]] = Field(min_length=1, description="object name -> words naming it in a caption")
    new_objects: list[str] = Field(min_length=1, description="objects that add and replace put in")
    colours: list[str] = Field(min_length=1, description="colours for recolour edits")
    materials: list[str] = Field(min_length=1, description="materials for retexture edits")
    places: list[str] = Field(min_length=1, description="where an added object goes")
    scenes: list[str] = Field(min_length=1, description="settings for invented captions")
    backgrounds: list[str] = Field(min_length=1, description="new backgrounds")
    styles: list[str] = Field(min_length=1, description="artistic styles")


def is_path(name: str) -> bool:
    """A taxonomy given as a file rather than a built-in name."""
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def load_taxonomy(name: str) -> Taxonomy:
    """A built-in taxonomy by name, or a YAML file by path (relative to the working directory)."""
    if is_path(name):
        return _load_file(str(Path(name).resolve()))
    if name not in BUILTIN:
        raise ValueError(f"unknown taxonomy {name!r}; built in: {', '.join(BUILTIN)} (or give the path of a .yaml file)")
    return _load_builtin(name)


def load_vocabulary(path: str | None = None) -> Vocabulary:
    """The built-in word lists, or a user's copy."""
    if path is None:
        return _vocabulary_builtin()
    return Vocabulary.model_validate(_read_yaml(_bounded_text(Path(path)), path))


@functools.cache
def _load_builtin(name: str) -> Taxonomy:
    text = resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return Taxonomy.model_validate(_read_yaml(text, f"{name}.yaml"))


@functools.cache
def _load_file(path: str) -> Taxonomy:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"no taxonomy file {path}")
    return Taxonomy.model_validate(_read_yaml(_bounded_text(file), path))


@functools.cache
def _vocabulary_builtin() -> Vocabulary:
    text = resources.files(__package__).joinpath("vocabulary.yaml").read_text(encoding="utf-8")
    return Vocabulary.model_validate(_read_yaml(text, "vocabulary.yaml"))


def _bounded_text(path: Path) -> str:
    from crispedit.core.located import MAX_RECIPE_BYTES
    from crispedit.core.storage import InputRefused, read_input

    try:
        return read_input(path, MAX_RECIPE_BYTES).decode("utf-8")
    except (InputRefused, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: {error}") from None


def _read_yaml(text: str, where: str) -> object:
    """YAML with the recipe reader's bounds (no alias bombs, no recursion): a taxonomy file is a recipe's to name."""
    from crispedit.core.located import RecipeError, parse_located

    try:
        return parse_located(text, where).data
    except RecipeError as error:
        raise ValueError("; ".join(str(p) for p in error.problems)) from None
