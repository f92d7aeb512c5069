"""The MLLM judge through the real openai client, over HTTP, against tests/helpers/llm_server.py."""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from crispedit.core.failures import TransientError
from crispedit.core.sample import Sample, sample_id
from crispedit.core.stage import BuildContext
from crispedit.engine.run import apply_stage
from crispedit.filters.judge import JudgeParams, JudgeStage
from tests.helpers.llm_server import LLMServer, request_schema

#: What the scripted judge answers, by the instruction it reads: (success, over-editing, naturalness, artifacts).
VERDICTS = {"make the sky red": (9, 8, 7, 9), "add a hat to the dog": (3, 9, 8, 8), "remove the car": (8, 2, 6, 6)}


def judge(body: dict[str, Any]) -> dict[str, Any]:
    """A judge that answers by the instruction in the prompt; the quality question carries none, so it uses the image size."""
    schema = request_schema(body)
    text = "\n".join(p.get("text", "") for m in body["messages"] if isinstance(m["content"], list) for p in m["content"])
    if "naturalness" in schema["properties"]:
        url = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image_url"][0]
        width = Image.open(io.BytesIO(base64.b64decode(url["image_url"]["url"].split(",", 1)[1]))).size[0]
        return {"reasoning": f"looks fine at {width} px", "naturalness": 7, "artifacts": 5 if width > 40 else 9}
    for instruction, (success, over, _, _) in VERDICTS.items():
        if instruction in text:
            return {"reasoning": f"judged: {instruction}", "editing_success": success, "over_editing": over}
    return {"reasoning": "unknown", "editing_success": 0, "over_editing": 0}


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with LLMServer(responder=judge) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(server: LLMServer) -> None:
    server.reset()


def stage(server: LLMServer, tmp_path: Path | None = None, **params: Any) -> JudgeStage:
    llm = {"base_url": server.url, "model": "local-test-model", "api_key_env": None, "temperature": 0.0, "timeout": 1.0,
           "max_retries": 2, "max_invalid_retries": 1, "backoff_initial": 0.01, "backoff_max": 0.05}
    cache = {"cache": tmp_path is not None}
    made = JudgeStage(JudgeParams.model_validate({"llm": llm, **cache, **params}),
                      BuildContext("judge", "judge", 0, cache_dir=tmp_path or Path(".unused")))
    made.setup()
    return made


def samples(width: int = 32) -> list[Sample]:
    out = []
    for i, instruction in enumerate(VERDICTS):
        rng = np.random.default_rng(i)
        source = rng.integers(0, 255, (24, width, 3), dtype=np.uint8)
        out.append(Sample(id=sample_id("judge", i), index=i, source_ref=str(i), source_image=source,
                          target_image=255 - source, instruction=instruction))
    return out


def test_good_answers_become_scores_reasoning_and_usage(server: LLMServer) -> None:
    out = apply_stage(stage(server, min_semantics=5), "judge", samples(), batch_size=8)
    sky, hat, car = out
    assert sky.scores["judge_semantics"] == 8 and sky.scores["judge_quality"] == 7
    assert sky.scores["judge_overall"] == pytest.approx(math.sqrt(8 * 7))
    assert (sky.scores["judge_edit_success"], sky.scores["judge_over_editing"]) == (9, 8)
    assert sky.alive and not car.alive and not hat.alive
    assert hat.reject.reason == "edit not followed: judge_semantics 3 < 5"
    assert car.reject.reason == "edit not followed: judge_semantics 2 < 5" and car.reject.filtered
    assert sky.provenance["judge"] == {"model": "local-test-model", "semantics_reasoning": "judged: make the sky red",
                                       "quality_reasoning": "looks fine at 32 px"}
    assert sky.usage["judge"]["requests"] == 2 and sky.usage["judge"]["tokens_in"] > 0
    # two questions per pair: both images for semantics, the edited one alone for quality, as PNG data URLs
    parts = [[p for p in r["messages"][0]["content"] if p["type"] == "image_url"] for r in server.requests]
    assert sorted(len(p) for p in parts) == [1, 1, 1, 2, 2, 2]
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for ps in parts for p in ps)
    assert all(r["temperature"] == 0.0 for r in server.requests)


def test_images_are_scaled_to_max_side(server: LLMServer) -> None:
    out = apply_stage(stage(server, max_side=40, min_quality=7), "judge", samples(width=80), batch_size=8)
    assert {s.scores["judge_artifacts"] for s in out} == {9.0}  # the judge saw 40-px images
    assert all(s.alive for s in out)
    out = apply_stage(stage(server, max_side=512, min_quality=6), "judge", samples(width=80), batch_size=8)
    assert all(s.reject.reason == "low quality: judge_quality 5 < 6" for s in out)


def test_malformed_answers_are_asked_again(server: LLMServer) -> None:
    # one malformed answer to each question (the two are in flight together: name which gets which)
    server.fail("malformed", times=1, match="make the sky red")
    server.fail("malformed", times=1, match="visual quality")
    out = apply_stage(stage(server), "judge", samples()[:1], batch_size=8)
    assert out[0].scores["judge_semantics"] == 8 and out[0].usage["judge"]["retries"] == 2


def test_answers_that_stay_invalid_leave_no_score_and_a_reject(server: LLMServer) -> None:
    server.fail("schema", times=100, match="make the sky red")
    out = apply_stage(stage(server, min_overall=1), "judge", samples(), batch_size=8)
    sky = out[0]
    assert sky.scores["judge_semantics"] is None and sky.scores["judge_quality"] == 7  # the quality answer was fine
    assert sky.reject.reason.startswith("no judge score: judge_overall missing")
    assert sky.provenance["judge"]["error"].startswith("semantics: llm-invalid: ")
    assert out[1].alive and out[2].alive


def test_429_is_waited_out(server: LLMServer) -> None:
    server.fail("rate_limit", times=2, retry_after=0.05)
    out = apply_stage(stage(server), "judge", samples()[:1], batch_size=8)
    assert out[0].scores["judge_overall"] is not None and out[0].usage["judge"]["retries"] == 2


def test_a_judge_that_times_out_after_its_retries_is_transient(server: LLMServer) -> None:
    server.fail("slow", times=100, delay=1.5)
    with pytest.raises(TransientError, match="llm-unavailable"):
        apply_stage(stage(server), "judge", samples()[:1], batch_size=8)
    server.reset()
    server.fail("rate_limit", times=100, retry_after=0.01)
    with pytest.raises(TransientError):
        apply_stage(stage(server), "judge", samples()[:1], batch_size=8)


def test_answers_are_cached(server: LLMServer, tmp_path: Path) -> None:
    first = apply_stage(stage(server, tmp_path), "judge", samples(), batch_size=8)
    asked = server.count
    second = apply_stage(stage(server, tmp_path), "judge", samples(), batch_size=8)
    assert server.count == asked == 6
    assert [s.scores for s in first] == [s.scores for s in second]
    assert all(s.usage["judge"]["cached"] == 2 for s in second)
    assert len(list((tmp_path / "llm").rglob("*.json"))) == 6
    assert json.dumps([s.provenance for s in first], sort_keys=True) == json.dumps([s.provenance for s in second], sort_keys=True)


def test_score_rejects_false_skips_pairs_already_rejected(server: LLMServer) -> None:
    batch = samples()
    batch[0].fail("clip_filter", "wrong direction: clip_dir 0.1 < 0.2", filtered=True)
    out = apply_stage(stage(server, score_rejects=False), "judge", batch, batch_size=8)
    assert out[0].scores == {} and server.count == 4


def reward_model(body: dict[str, Any]) -> dict[str, Any]:
    """An EditScore-style server: the answer moves with the seed (seed 0 -> 20/15, 1 -> 21/16, ...), as sampling would."""
    schema = request_schema(body)
    shift = float(body.get("seed") or 0) % 5
    if "semantics" in schema["properties"]:
        return {"reasoning": f"seed {body.get('seed')}", "semantics": 20.0 + shift, "quality": 15.0 + shift}
    return judge(body)


def test_reward_model_passes_are_distinct_seeded_requests_with_mean_and_spread(tmp_path: Path) -> None:
    with LLMServer(responder=reward_model) as server:
        def make() -> JudgeStage:
            llm = {"base_url": server.url, "model": "editscore-7b", "api_key_env": None, "temperature": 0.7, "seed": 0,
                   "max_retries": 1, "max_invalid_retries": 1, "backoff_initial": 0.01, "backoff_max": 0.02}
            made = JudgeStage(JudgeParams.model_validate({"llm": llm, "rubric": "editscore", "passes": 3, "min_overall": 5}),
                              BuildContext("judge", "judge", 0, cache_dir=tmp_path))
            made.setup()
            return made

        judged = make()
        assert judged.score_columns() == ["editscore_semantics", "editscore_quality", "editscore_overall", "editscore_semantics_std",
                                          "editscore_quality_std", "editscore_overall_std"]
        out = apply_stage(judged, "judge", samples()[:2], batch_size=8)
        assert server.count == 6  # 2 pairs x 3 passes, one question each
        seeds = sorted(r["seed"] for r in server.requests)
        assert seeds == [0, 0, 1, 1, 2, 2] and all(r["temperature"] == 0.7 for r in server.requests)
        sky = out[0].scores
        semantics = [10 * (20 + k) / 25 for k in range(3)]  # 0-25 mapped to 0-10
        assert sky["editscore_semantics"] == pytest.approx(np.mean(semantics))
        assert sky["editscore_semantics_std"] == pytest.approx(np.std(semantics))
        overall = [math.sqrt(10 * (20 + k) / 25 * 10 * (15 + k) / 25) for k in range(3)]
        assert sky["editscore_overall"] == pytest.approx(np.mean(overall)) and out[0].alive
        assert out[0].provenance["judge"]["reasoning"] == ["seed 0", "seed 1", "seed 2"]
        # the rerun is answered from the cache: no request at all, the same scores
        server.reset()
        again = apply_stage(make(), "judge", samples()[:2], batch_size=8)
        assert server.count == 0 and [s.scores for s in again] == [s.scores for s in out]


@pytest.mark.parametrize("rubric, columns", [("editreward", ["editreward_instruction_following", "editreward_visual_quality"]),
                                             ("imgedit", ["imgedit_compliance", "imgedit_naturalness", "imgedit_preservation"])])
def test_every_bundled_rubric_maps_its_range_to_ten(server: LLMServer, rubric: str, columns: list[str]) -> None:
    out = apply_stage(stage(server, rubric=rubric), "judge", samples()[:1], batch_size=8)
    schema = request_schema(server.requests[0])
    # the scripted server fills a schema's numbers with its minimum: the low end of the range is 0 on our scale
    assert set(schema["properties"]) == {"reasoning", *(c.split("_", 1)[1] for c in columns)}
    assert all(schema["properties"][c.split("_", 1)[1]]["minimum"] >= 1 for c in columns)
    assert set(out[0].scores) == {*columns, f"{rubric}_overall"}


def test_an_answer_out_of_range_is_a_reject_with_its_raw_text_never_a_score(tmp_path: Path) -> None:
    def too_high(body: dict[str, Any]) -> dict[str, Any]:
        return {"reasoning": "great", "semantics": 30, "quality": 12}  # 30 is outside EditScore's 0-25

    with LLMServer(responder=too_high) as server:
        llm = {"base_url": server.url, "model": "editscore-7b", "api_key_env": None, "temperature": 0.7,
               "max_retries": 1, "max_invalid_retries": 2, "backoff_initial": 0.01, "backoff_max": 0.02}
        judged = JudgeStage(JudgeParams.model_validate({"llm": llm, "rubric": "editscore", "passes": 2}),
                            BuildContext("judge", "judge", 0, cache_dir=tmp_path))
        judged.setup()
        out = apply_stage(judged, "judge", samples()[:1], batch_size=8)
        assert server.count == 2 * 3  # each pass asked again twice with the error fed back
    pair = out[0]
    assert all(v is None for v in pair.scores.values()) and not pair.alive
    assert pair.reject.reason.startswith("no judge score")
    assert '"semantics": 30' in pair.provenance["judge"]["raw"] or '"semantics":30' in pair.provenance["judge"]["raw"]
    assert "llm-invalid" in pair.provenance["judge"]["error"]


def test_passes_at_temperature_zero_and_viescore_bounds_with_a_rubric_are_refused(server: LLMServer) -> None:
    llm = {"base_url": server.url, "model": "m", "api_key_env": None, "temperature": 0.0}
    with pytest.raises(ValueError, match="temperature > 0"):
        JudgeParams.model_validate({"llm": llm, "passes": 2})
    with pytest.raises(ValueError, match="min_overall or min_scores"):
        JudgeParams.model_validate({"llm": llm, "rubric": "imgedit", "min_semantics": 5})
