"""The instruct stage (template and openai backends), the taxonomies, and the text-only sources."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from crispedit.core.failures import TransientError
from crispedit.core.sample import Sample, sample_id
from crispedit.core.stage import BuildContext
from crispedit.instruct.specs import answer_model
from crispedit.instruct.stages import InstructParams, InstructStage
from crispedit.instruct.taxonomies import BUILTIN, load_taxonomy, load_vocabulary
from crispedit.sources.text import CaptionsParams, CaptionsSource, EmptyParams, EmptySource
from tests.helpers.llm_server import LLMServer, serving
from tests.helpers.recipes import write_recipe

KEY_ENV = "CRISPEDIT_TEST_INSTRUCT_KEY"
KEY = "sk-instruct-Hq27wP0kXz-unmistakable"


server = pytest.fixture(scope="module", name="server")(serving)


@pytest.fixture(autouse=True)
def fresh(server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.wait_idle()  # a slow answer an earlier test gave up on must not count as in flight here
    server.reset()
    monkeypatch.setenv(KEY_ENV, KEY)


def context(tmp_path: Path | None = None, tiny: bool = False) -> BuildContext:
    return BuildContext(recipe_name="t", fingerprint="f1", seed=0, tiny=tiny, cache_dir=(tmp_path or Path("/nonexistent")) / ".cache")


def llm(url: str, **changes: object) -> dict:
    return {"base_url": url, "model": "local-test-model", "api_key_env": KEY_ENV, "max_retries": 1,
            "backoff_initial": 0.01, "backoff_max": 0.02, "timeout": 2.0, **changes}


def empty_items(n: int, **params: object) -> list[Sample]:
    return EmptySource(EmptyParams(count=n, **params), context()).load(0, n)


def run(params: dict, samples: list[Sample], ctx: BuildContext) -> list[Sample]:
    stage = InstructStage(InstructParams.model_validate(params), ctx)
    stage.setup()
    try:
        return stage(samples)
    finally:
        if stage.client is not None:
            stage.client.close()


def spec(s: Sample) -> dict:
    return {k: getattr(s, k) for k in ("task", "source_caption", "instruction", "target_caption", "edit_objects", "inverse_instruction")}


# --- taxonomies ---------------------------------------------------------------------------


def test_the_builtin_taxonomies_have_their_anchors_categories() -> None:
    assert list(load_taxonomy("crispedit2m").categories) == ["add", "remove", "replace", "color", "motion", "background", "style"]
    assert list(load_taxonomy("editworld").categories) == [
        "long_term", "physical_transformation", "implicit_logic", "story_type", "real_to_virtual", "spatial_transformation", "exaggeration",
    ]
    emu = load_taxonomy("emu_edit").categories
    assert {"background", "global", "style", "remove", "add", "local", "texture"} <= set(emu)  # the benchmark's seven


@pytest.mark.parametrize("name", BUILTIN)
def test_every_seed_example_is_a_valid_answer_of_its_category(name: str) -> None:
    for task, category in load_taxonomy(name).categories.items():
        assert category.definition and len(category.examples) >= 2
        model = answer_model(task, category.region, True, True)
        for example in category.examples:
            model.model_validate({**example.model_dump(), "task": task})  # raises if a region example names no object


# --- template backend -----------------------------------------------------------------------


def test_template_region_mode_edits_named_objects_from_the_vocabulary() -> None:
    vocabulary = load_vocabulary()
    out = run({"backend": "template", "mode": "region"}, empty_items(60), context())
    assert all(s.alive for s in out)
    assert {s.task for s in out} == {"add", "remove", "replace", "color"}
    known_words = {w for words in vocabulary.objects.values() for w in words}
    for s in out:
        assert s.edit_objects and s.instruction and s.source_caption and s.target_caption != s.source_caption
        if s.task == "add":
            assert s.edit_objects[0] in vocabulary.new_objects and s.edit_objects[0] in s.target_caption
        else:  # the edited object is named in the input caption
            assert re.sub(r"s$", "", s.edit_objects[0]) in known_words and s.edit_objects[0] in s.source_caption
        if s.task == "remove":  # the writer's own captions lose the object's phrase
            assert len(s.target_caption) < len(s.source_caption) and "removed" not in s.target_caption
        if s.task == "replace":
            assert s.edit_objects[1] in s.target_caption and s.edit_objects[1] in vocabulary.new_objects
        assert s.provenance["instruct"]["backend"] == "template"
    again = run({"backend": "template", "mode": "region"}, empty_items(60), context())
    assert [spec(s) for s in again] == [spec(s) for s in out]  # the items' seeds decide everything


def test_template_region_mode_on_captions_edits_what_the_caption_names() -> None:
    samples = [Sample(id=f"i{i}", index=i, source_ref="x", source_caption=c) for i, c in
               enumerate(["a cup of coffee on a saucer with a spoon", "a close-up photo of a tabby cat", "a deep-space image of galaxies"])]
    out = run({"backend": "template", "mode": "region", "categories": {"remove": 1, "color": 1}}, samples, context())
    assert out[0].alive and out[0].edit_objects[0] in ("cup", "saucer", "spoon")
    assert out[1].alive and out[1].edit_objects == ["cat"]
    assert not out[2].alive and out[2].reject.reason.startswith("template-no-object: ")  # nothing known to edit, no add allowed
    fallback = run({"backend": "template", "mode": "region"}, [Sample(id="g", index=0, source_ref="x", source_caption="galaxies")], context())
    assert fallback[0].alive and fallback[0].task == "add"


def test_template_global_mode_is_the_classical_catalogue() -> None:
    samples = [Sample(id=sample_id("f1", i), index=i, source_ref="x", source_caption="a photo") for i in range(3)]
    out = run({"backend": "template"}, samples, context())
    for s in out:
        assert s.meta["edit"]["name"] and s.instruction and s.inverse_instruction and s.edit_objects == []


def test_template_writes_any_taxonomy_offline() -> None:
    out = run({"backend": "template", "mode": "scratch", "taxonomy": "editworld", "inverse": True}, empty_items(14), context())
    assert all(s.alive and s.inverse_instruction and s.source_caption for s in out)
    assert {s.task for s in out} <= set(load_taxonomy("editworld").categories)


# --- openai backend ---------------------------------------------------------------------------


def test_scratch_mode_fills_the_record_from_the_answers(server: LLMServer, tmp_path: Path) -> None:
    items = empty_items(6, texts=["a lighthouse at dusk", "a bowl of ramen"])
    out = run({"backend": "openai", "mode": "scratch", "inverse": True, "few_shot": 2, "llm": llm(server.url)}, items, context(tmp_path))
    assert server.count == 6
    by_seed = {body["seed"]: body for body in server.requests}  # requests arrive in any order
    for s in out:
        body = by_seed[s.provenance["instruct"]["seed"]]
        assert s.alive and s.instruction and s.target_caption and s.source_caption and s.inverse_instruction and s.edit_objects
        info = s.provenance["instruct"]
        assert info["backend"] == "openai" and info["category"] == s.task and len(info["few_shot"]) == 2
        schema = body["response_format"]["json_schema"]["schema"]
        assert schema["properties"]["task"]["const"] == s.task and "source_caption" in schema["required"]
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        assert load_taxonomy("crispedit2m").categories[s.task].definition in system and system.count("Answer: {") == 2
        assert f"The image shows {s.meta['topic']}." in user
        assert s.usage["instruct"]["requests"] == 1 and s.usage["instruct"]["tokens_in"] > 0


def test_the_same_recipe_asks_the_same_questions_and_a_rerun_is_cached(server: LLMServer, tmp_path: Path) -> None:
    params = {"backend": "openai", "mode": "scratch", "llm": llm(server.url)}
    first = run(params, empty_items(8), context(tmp_path))
    bodies = list(server.requests)
    server.reset()
    second = run(params, empty_items(8), context(tmp_path))
    assert server.count == 0 and [spec(s) for s in second] == [spec(s) for s in first]
    assert all(s.usage["instruct"] == {"cached": 1} for s in second)
    run(params, empty_items(8), context(tmp_path / "elsewhere"))  # no cache: the very same requests again
    def canonical(requests: list[dict]) -> list[str]:  # they arrive concurrently, in any order
        return sorted(json.dumps(r, sort_keys=True) for r in requests)

    assert canonical(server.requests) == canonical(bodies)
    assert len({json.dumps(b["messages"]) for b in bodies}) == 8  # items without a topic still differ


def test_caption_mode_asks_from_the_caption(server: LLMServer, tmp_path: Path) -> None:
    file = tmp_path / "captions.jsonl"
    file.write_text('{"caption": "a red car parked on a street"}\n{"caption": ""}\n{"caption": "two dogs on a beach"}\n')
    items = CaptionsSource(CaptionsParams(file=str(file)), context()).load(0, 3)
    assert not items[1].alive and items[1].reject.reason.startswith("empty-caption: row 1")
    live = [s for s in items if s.alive]
    out = run({"backend": "openai", "mode": "caption", "llm": llm(server.url)}, live, context(tmp_path))
    assert server.count == 2 and all(s.alive for s in out)
    assert [s.source_caption for s in out] == ["a red car parked on a street", "two dogs on a beach"]  # kept, not rewritten
    users = sorted(r["messages"][1]["content"] for r in server.requests)  # they arrive in any order
    assert users[0].startswith("Input image: a red car parked on a street\n") and users[1].startswith("Input image: two dogs")
    assert all("source_caption" not in r["response_format"]["json_schema"]["schema"]["properties"] for r in server.requests)
    missing = run({"backend": "openai", "mode": "caption", "llm": llm(server.url)}, empty_items(1), context(tmp_path))
    assert missing[0].reject.reason.startswith("no-caption: ") and server.count == 2


def test_image_mode_sends_the_image_as_a_data_url(server: LLMServer, tmp_path: Path) -> None:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (300, 800, 3), dtype=np.uint8)
    sample = Sample(id="img", index=0, source_ref="x", source_image=pixels)
    out = run({"backend": "openai", "mode": "image", "max_image_side": 400, "llm": llm(server.url)}, [sample], context(tmp_path))
    assert out[0].alive and out[0].source_caption  # the vision model described the image
    text, image = server.requests[0]["messages"][1]["content"]
    assert text["type"] == "text" and image["type"] == "image_url"
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (400, 150)


def test_a_refusal_rejects_only_its_sample(server: LLMServer, tmp_path: Path) -> None:
    server.fail("refusal")
    out = run({"backend": "openai", "mode": "scratch", "llm": llm(server.url)}, empty_items(4), context(tmp_path))
    rejected = [s for s in out if not s.alive]
    assert len(rejected) == 1 and rejected[0].reject.reason.startswith("llm-refusal: ")
    assert rejected[0].usage["instruct"]["requests"] == 1


def test_an_unreachable_server_is_transient(tmp_path: Path) -> None:
    gone = LLMServer().start()
    gone.stop()
    with pytest.raises(TransientError):
        run({"backend": "openai", "mode": "scratch", "llm": llm(gone.url)}, empty_items(2), context(tmp_path))


def test_tiny_answers_offline_with_the_same_schema(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.WARNING, logger="crispedit")
    params = {"backend": "openai", "mode": "scratch", "inverse": True, "taxonomy": "emu_edit",
              "categories": {"add": 1, "remove": 1, "style": 1}, "llm": llm("http://127.0.0.1:9/v1")}
    stage = InstructStage(InstructParams.model_validate(params), context(tmp_path, tiny=True))
    stage.setup()
    out = stage(empty_items(9))
    assert stage.client is None and all(s.alive for s in out)
    assert {s.task for s in out} <= {"add", "remove", "style"}
    assert all(s.provenance["instruct"]["backend"] == "template (tiny)" and s.inverse_instruction for s in out)
    assert "--tiny" in caplog.text and stage.model_ids() == {"llm": "template (tiny)"}
    assert not (tmp_path / ".cache").exists()


def test_params_are_checked_when_the_recipe_is_read() -> None:
    def refused(**params: object) -> str:
        with pytest.raises(ValidationError) as error:
            InstructParams.model_validate(params)
        return str(error.value)

    assert "needs an `llm:` block" in refused(backend="openai")
    assert "template-only" in refused(backend="openai", mode="region", llm=llm("http://x/v1"))
    assert "unknown categories ['paint']" in refused(mode="scratch", categories={"paint": 1})
    assert "its object-edit categories: add, remove, replace, color" in refused(mode="region", categories={"style": 1})
    assert "positive weight" in refused(mode="scratch", categories={"add": 0})
    assert "unknown taxonomy" in refused(mode="scratch", taxonomy="nope")
    assert "global only" in refused(mode="region", edits=["grayscale"])
    assert all(f.description for f in InstructParams.model_fields.values())


# --- text sources ------------------------------------------------------------------------------


def test_empty_source_items_are_seeded_in_turn() -> None:
    items = empty_items(5, texts=["a castle", "a harbour"])
    assert [s.meta["topic"] for s in items] == ["a castle", "a harbour", "a castle", "a harbour", "a castle"]
    assert all(s.source_image is None and s.source_caption is None for s in items)
    captions = empty_items(2, texts=["a red barn"], seed_as="caption")
    assert [s.source_caption for s in captions] == ["a red barn", "a red barn"]
    assert [s.id for s in empty_items(3)] == [sample_id("f1", i) for i in range(3)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".txt"])
def test_captions_source_reads_every_format(tmp_path: Path, suffix: str) -> None:
    texts = ["a cat on a mat", "a boat, at sea", "a tree in fog"]
    file = tmp_path / f"c{suffix}"
    if suffix == ".jsonl":
        file.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    elif suffix == ".csv":
        file.write_text("id,prompt\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    elif suffix == ".parquet":
        pq.write_table(pa.table({"prompt": texts}), file)
    else:
        file.write_text("\n".join(texts[:1] + [""] + texts[1:]) + "\n")  # blank lines are skipped
    source = CaptionsSource(CaptionsParams(file=str(file), column="prompt"), context())
    assert source.count() == 3
    assert [s.source_caption for s in source.load(0, 3)] == texts
    assert source.load(1, 2)[0].source_ref == f"c{suffix}:row 1"


def test_captions_source_names_a_missing_column(tmp_path: Path) -> None:
    file = tmp_path / "c.csv"
    file.write_text("text\nhello\n")
    with pytest.raises(ValueError, match="no column 'caption'"):
        CaptionsSource(CaptionsParams(file=str(file)), context()).count()
    with pytest.raises(ValidationError, match="no such file"):
        CaptionsParams(file=str(tmp_path / "absent.jsonl"))


# --- through the engine ------------------------------------------------------------------------

BUILD_RECIPE = """
name: instruct-llm-test
seed: 0
output: {{dir: out, shard_size: 4}}
execution: {{runner: local}}
source: {{kind: captions, file: {captions}}}
stages:
  - kind: instruct
    backend: openai
    mode: caption
    inverse: true
    llm:
      base_url: {url}
      model: local-test-model
      api_key_env: {key_env}
      max_retries: 1
      backoff_initial: 0.01
      backoff_max: 0.02
      price_in_per_million: 1.0
      price_out_per_million: 2.0
"""


def test_a_build_resumes_asking_only_what_was_not_answered_and_never_writes_the_key(
    server: LLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from crispedit.engine import build

    caplog.set_level(logging.DEBUG)
    from crispedit.recipe import load_plan

    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"caption": f"a photo of a cat number {i}"}) + "\n" for i in range(8)))
    recipe = write_recipe(tmp_path, BUILD_RECIPE.format(captions=captions, url=server.url, key_env=KEY_ENV))
    out = tmp_path / "out"
    # The server is down for one item: its shard stays uncommitted, the other answers are cached.
    server.fail("server_error", times=100, match="cat number 5")
    first = build(load_plan(recipe, out=out), runner="local", progress=False)
    assert first.shards_built == 1 and list(first.failed.values())[0].count("llm-unavailable") == 1
    assert server.count == 8 + 1  # seven answers, and item 5 tried twice
    server.reset()
    second = build(load_plan(recipe, out=out), runner="local", progress=False)
    assert server.count == 1 and "cat number 5" in json.dumps(server.requests[0]["messages"])
    assert second.failed == {} and second.summary["complete"]
    rows = pq.read_table(out / "data").to_pylist()
    assert len(rows) == 8 and all(r["instruction"] and r["inverse_instruction"] and r["task"] for r in rows)
    usage = second.summary["stages"]["instruct"]["usage"]
    assert usage["requests"] == 5 and usage["cached"] == 3 and usage["cost_usd"] > 0  # shard 2: 3 from the cache, 1 asked twice
    leaked = [p for p in out.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert (out / ".cache" / "llm").is_dir() and leaked == [] and KEY not in caplog.text
    assert set(server.authorizations) == {f"Bearer {KEY}"}  # it was the key that was used


def test_specifications_reviewed_with_until_are_not_asked_again_by_the_full_build(server: LLMServer, tmp_path: Path) -> None:
    from crispedit.engine import build
    from crispedit.recipe import load_plan, plan_until

    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"caption": f"a red kite number {i}"}) + "\n" for i in range(6)))
    recipe = write_recipe(tmp_path, BUILD_RECIPE.format(captions=captions, url=server.url, key_env=KEY_ENV))
    out = tmp_path / "out"
    review = build(plan_until(load_plan(recipe, out=out), "instruct"), runner="local", progress=False)
    assert server.count == 6 and Path(review.out_dir) == out / "until" / "instruct"
    full = build(load_plan(recipe, out=out), runner="local", progress=False)
    assert server.count == 6 and full.summary["stages"]["instruct"]["usage"]["cached"] == 6
    reviewed = pq.read_table(out / "until" / "instruct" / "data").sort_by("id")
    built = pq.read_table(out / "data").sort_by("id")
    assert reviewed.column("instruction").to_pylist() == built.column("instruction").to_pylist()
