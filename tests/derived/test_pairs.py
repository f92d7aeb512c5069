"""Inverse and composed pairs: the library, the stages, and their LLM wording through the real client over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crispedit.recipe.catalog  # noqa: F401  (registers every kind)
from crispedit.core.sample import child_id
from crispedit.core.shards import ShardStore
from crispedit.core.stage import BuildContext
from crispedit.derived.chain import l1_outside
from crispedit.derived.stages.compose import ComposeParams, ComposeStage
from crispedit.derived.stages.inverse import InverseParams, InverseStage
from crispedit.engine.run import apply_stage
from tests.helpers.llm_server import LLMServer, request_schema
from tests.helpers.stage_cases import chain_turns, edited, photo

CONTEXT = BuildContext("derived", "derived", 0)
TEXT = ("instruction", "inverse_instruction", "source_caption", "target_caption", "task", "branch")


def classical_pairs(n: int = 3) -> list:
    """Pairs made by the real instruct (template) and classical stages: each carries its edit's inverse."""
    from crispedit.classical.stages import ClassicalStage

    return apply_stage(ClassicalStage(ClassicalStage.Params(), CONTEXT), "classical", edited(n), 8)


def inverse(rows: list, **params: Any) -> list:
    return apply_stage(InverseStage(InverseParams.model_validate(params), CONTEXT), "inverse", rows, 64)


def png_row(store: ShardStore, sample: Any) -> dict[str, Any]:
    """The shard row the writer makes of a sample: encoded image bytes and text columns."""
    row = store.part_table([sample]).to_pylist()[0]
    return {k: (row[k] or {}).get("bytes") if k in ("source_image", "target_image", "mask") else row[k]
            for k in ("source_image", "target_image", "mask", *TEXT, "edit_objects")}


def test_the_inverse_of_an_inverse_is_the_original_pair_byte_for_byte(tmp_path: Path) -> None:
    forward = classical_pairs()
    once = inverse(forward)
    assert [s.parent_id for s in once] == [None, forward[0].id, None, forward[1].id, None, forward[2].id]
    inverses = once[1::2]
    for pair, inv in zip(forward, inverses, strict=True):
        assert inv.id == child_id(pair.id, 0) and inv.lineage == (0,) and inv.alive
        assert np.array_equal(inv.source_image, pair.target_image) and np.array_equal(inv.target_image, pair.source_image)
        assert (inv.instruction, inv.inverse_instruction) == (pair.inverse_instruction, pair.instruction)
        assert inv.scores == {} and inv.provenance["derived"]["synthetic_source"] is True
    twice = inverse(inverses, invert_inverses=True)[1::2]
    store = ShardStore(tmp_path, [])
    for pair, back in zip(forward, twice, strict=True):
        assert png_row(store, back) == png_row(store, pair)
        record = back.provenance["derived"]
        assert (record["synthetic_source"], record["synthetic_target"]) == (False, True)
    # by default an inverse is not inverted again (it would only give the forward pair back)
    assert [s.id for s in inverse(inverses)] == [s.id for s in inverses]


def test_a_pair_without_an_inverse_gets_a_reject_that_says_so() -> None:
    forward = classical_pairs(1)
    forward[0].inverse_instruction = None
    forward[0].provenance.pop("generate")  # no classical edit to undo either
    pair, inv = inverse(forward)
    assert pair.alive and not inv.alive and inv.reject.reason.startswith("no inverse instruction")


def words(body: dict[str, Any]) -> dict[str, Any]:
    """A scripted writer: an inverse names the instruction it undoes; a compound joins the steps with ' and '."""
    schema = request_schema(body)
    text = body["messages"][-1]["content"]
    text = text if isinstance(text, str) else text[0]["text"]
    if "inverse_instruction" in schema["properties"]:
        applied = text.split("Instruction that was applied: ", 1)[1].split("\n", 1)[0]
        return {"inverse_instruction": f"Reverse this: {applied}"}
    steps = [line.split(". ", 1)[1] for line in text.splitlines() if line[:1].isdigit()]
    return {"instruction": " and ".join(steps)}


@pytest.fixture(scope="module")
def writer() -> Iterator[LLMServer]:
    with LLMServer(responder=words) as running:
        yield running


def llm(server: LLMServer) -> dict[str, Any]:
    return {"base_url": server.url, "model": "local-writer", "api_key_env": None, "timeout": 2.0, "max_retries": 1,
            "backoff_initial": 0.01, "backoff_max": 0.05}


def test_the_llm_writes_missing_inverses_once_and_a_rerun_asks_nothing(writer: LLMServer, tmp_path: Path) -> None:
    pairs = classical_pairs(2)
    pairs[0].inverse_instruction = None
    context = BuildContext("derived", "derived", 0, cache_dir=tmp_path)
    stage = InverseStage(InverseParams.model_validate({"backend": "openai", "llm": llm(writer)}), context)
    assert stage.in_actor_pool
    stage.setup()
    writer.reset()
    out = apply_stage(stage, "inverse", pairs, 8)
    assert writer.count == 1  # only the pair without an inverse instruction is asked about
    assert out[1].instruction == f"Reverse this: {pairs[0].instruction}" and out[1].provenance["derived"]["instruction_by"] == "llm:local-writer"
    assert out[0].inverse_instruction == out[1].instruction  # the forward pair learns it too
    assert out[3].instruction == pairs[1].inverse_instruction and out[1].usage["inverse"]["requests"] == 1
    again = InverseStage(InverseParams.model_validate({"backend": "openai", "llm": llm(writer)}), context)
    again.setup()
    writer.reset()
    assert [s.instruction for s in apply_stage(again, "inverse", [pairs[0]], 8)][1] == out[1].instruction
    assert writer.count == 0
    tiny = InverseStage(InverseParams.model_validate({"backend": "openai", "llm": llm(writer)}), BuildContext("d", "d", 0, tiny=True))
    assert not tiny.in_actor_pool  # --tiny answers from the templates, offline


def test_compose_makes_every_run_of_turns_with_compound_words(writer: LLMServer) -> None:
    turns = chain_turns(chains=1, turns=3)
    out = apply_stage(ComposeStage(ComposeParams(spans="all"), CONTEXT), "compose", turns, 64)
    made = [s for s in out if s.provenance.get("derived")]
    assert [(s.provenance["derived"]["turns"], s.parent_id, s.id) for s in made] == [
        ([1, 2], turns[1].id, child_id(turns[1].id, 1)), ([1, 3], turns[2].id, child_id(turns[2].id, 1)),
        ([2, 3], turns[2].id, child_id(turns[2].id, 2))]
    one_three = made[1]
    assert np.array_equal(one_three.source_image, turns[0].source_image) and np.array_equal(one_three.target_image, turns[2].target_image)
    assert one_three.instruction == "brighten it, step 1, then brighten it, step 2, then brighten it, step 3"
    assert one_three.inverse_instruction == "darken it, step 3, then darken it, step 2, then darken it, step 1"
    assert one_three.turn is None and one_three.scores == {}
    start = apply_stage(ComposeStage(ComposeParams(), CONTEXT), "compose", chain_turns(1, 3), 64)
    assert [s.provenance["derived"]["turns"] for s in start if s.provenance.get("derived")] == [[1, 2], [1, 3]]
    asked = ComposeStage(ComposeParams.model_validate({"backend": "openai", "llm": llm(writer)}), CONTEXT)
    asked.setup()
    by_llm = [s for s in apply_stage(asked, "compose", chain_turns(1, 2), 64) if s.provenance.get("derived")]
    assert by_llm[0].instruction == "brighten it, step 1 and brighten it, step 2"


def test_a_broken_turn_is_never_composed() -> None:
    turns = chain_turns(chains=1, turns=3)
    turns[1].fail("multi_turn", "chain broken: test", filtered=True)
    out = apply_stage(ComposeStage(ComposeParams(spans="all"), CONTEXT), "compose", turns, 64)
    assert len(out) == 3 and not any(s.provenance.get("derived") for s in out)


def test_l1_outside_the_union_of_masks_matches_numpy() -> None:
    original = photo(1, 48)
    current = photo(2, 48)
    a = np.zeros((48, 48), np.uint8)
    a[4:20, 4:20] = 255
    b = np.zeros((48, 48), np.uint8)
    b[30:40, 10:44] = 200
    outside = ~((a > 127) | (b > 127))
    expected = (np.abs(original.astype(float) - current.astype(float)).mean(axis=2) / 255.0)[outside].mean()
    assert l1_outside(original, current, [a, None, b]) == pytest.approx(expected, abs=1e-12)
    whole = np.abs(original.astype(float) - current.astype(float)).mean() / 255.0
    assert l1_outside(original, current, [None]) == pytest.approx(whole, abs=1e-12)
    assert l1_outside(original, current, [np.full((48, 48), 255, np.uint8)]) is None
