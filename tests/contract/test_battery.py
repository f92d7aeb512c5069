"""The contract battery, run over every registered stage and source kind (cases: tests/helpers/stage_cases.py).

A batch gives what its samples give one by one; the same inputs give the same bytes; what a
kind declares it writes is written; a stage pickles (Ray ships it); every parameter is
described (docs/reference.md is generated from the descriptions, and must be current).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crispedit.core.sample import Sample
from crispedit.core.stage import BuildContext, Stage
from crispedit.engine.run import apply_stage
from crispedit.recipe.catalog import SOURCES, STAGES
from crispedit.recipe.reference import render
from tests.helpers.recipes import REPO
from tests.helpers.stage_cases import SOURCE_CASES, STAGE_CASES

CONTEXT = BuildContext(recipe_name="battery", fingerprint="battery", seed=3, tiny=True)
KINDS = sorted(k for k, cls in STAGES.items() if not cls.__module__.startswith("tests."))


def make(kind: str) -> Stage:
    cls = STAGES[kind]
    stage = cls(cls.Params.model_validate(STAGE_CASES[kind].params), CONTEXT)
    stage.setup()
    return stage


def digest_image(image: np.ndarray | None) -> str | None:
    return None if image is None else hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16] + str(image.shape)


def snapshot(samples: list[Sample]) -> list[tuple[Any, ...]]:
    """Everything a shard row is made of, comparable with ==."""
    return [
        (s.id, s.parent_id, s.lineage, s.reject and (s.reject.stage, s.reject.reason), digest_image(s.source_image),
         digest_image(s.target_image), digest_image(s.mask), s.instruction, s.inverse_instruction, s.task,
         s.source_caption, s.target_caption, tuple(s.edit_objects), s.branch,
         tuple(sorted((k, None if v is None else round(v, 9)) for k, v in s.scores.items())), repr(sorted(s.provenance.items())))
        for s in samples
    ]


def test_every_kind_has_a_battery_case() -> None:
    assert sorted(set(KINDS) - set(STAGE_CASES)) == [], "add a StageCase in tests/helpers/stage_cases.py"
    assert sorted(set(SOURCES) - set(SOURCE_CASES)) == [], "add a source case in tests/helpers/stage_cases.py"


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_gives_what_its_samples_give_one_by_one(kind: str) -> None:
    stage, case = make(kind), STAGE_CASES[kind]
    together = apply_stage(stage, kind, case.inputs(), batch_size=64)
    inputs = case.inputs()
    size = 1 if not stage.whole_families else len(inputs)
    alone = apply_stage(stage, kind, inputs, batch_size=size)
    assert snapshot(together) == snapshot(alone)
    assert any(s.alive for s in together), "the case should let at least one sample through"


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_inputs_give_the_same_bytes(kind: str) -> None:
    case = STAGE_CASES[kind]
    first = apply_stage(make(kind), kind, case.inputs(), batch_size=64)
    second = apply_stage(make(kind), kind, case.inputs(), batch_size=64)
    assert snapshot(first) == snapshot(second)


@pytest.mark.parametrize("kind", KINDS)
def test_declared_outputs_and_scores_are_written(kind: str) -> None:
    stage, case = make(kind), STAGE_CASES[kind]
    out = apply_stage(stage, kind, case.inputs(), batch_size=64)
    live = [s for s in out if s.alive]
    assert live
    for name in sorted(stage.outputs() - case.optional):
        for s in live:
            if name.startswith("meta."):
                assert name[5:] in s.meta, f"{kind} declares {name} but did not write it"
            else:
                assert getattr(s, name) is not None, f"{kind} declares {name} but left it empty"
    for column in stage.score_columns():
        assert all(column in s.scores for s in out if s.alive or (s.reject and s.reject.stage == kind))


@pytest.mark.parametrize("kind", KINDS)
def test_a_stage_pickles(kind: str) -> None:
    cls = STAGES[kind]
    stage = cls(cls.Params.model_validate(STAGE_CASES[kind].params), CONTEXT, name="renamed")
    again = pickle.loads(pickle.dumps(stage))
    assert again.params == stage.params and again.name == "renamed"


@pytest.mark.parametrize("kind", sorted(set(KINDS) | set(SOURCES)))
def test_every_parameter_is_described(kind: str) -> None:
    cls = STAGES.get(kind) or SOURCES[kind]
    undescribed = [name for name, f in cls.Params.model_fields.items() if not (f.description or "").strip()]
    assert undescribed == [], f"{kind}: describe {undescribed} with Field(description=...)"


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_a_source_counts_cheaply_and_loads_any_split_alike(kind: str, tmp_path: Path) -> None:
    cls = SOURCES[kind]
    source = cls(cls.Params.model_validate(SOURCE_CASES[kind](tmp_path)), CONTEXT)
    n = source.count()
    assert n >= 2
    whole = source.load(0, n)
    assert [s.index for s in whole] == list(range(n))
    split = source.load(0, 1) + source.load(1, n)
    assert snapshot(split) == snapshot(whole)
    for s in whole:
        if s.alive:
            for name in source.outputs():
                assert (name[5:] in s.meta) if name.startswith("meta.") else getattr(s, name) is not None, (kind, name)
    assert pickle.loads(pickle.dumps(source)).params == source.params


def test_docs_reference_is_generated_from_the_code() -> None:
    current = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    assert current == render(), "docs/reference.md is stale: run `python -m crispedit.recipe.reference > docs/reference.md`"
