"""Task prediction and GEdit-style scoring through the project's LLM client, over real HTTP
against the local OpenAI-protocol server (tests/helpers/llm_server.py)."""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crispedit.mgt import cli
from crispedit.mgt.llm_tasks import llm_settings, predict_tasks
from tests.helpers.llm_server import LLMServer, request_schema
from tests.mgt.conftest import IMAGE_TYPE, draw_photo, image_struct


def _answer(body):
    """Task requests: the category named by the instruction's verb; judge requests: fixed scores."""
    schema = request_schema(body) or {}
    props = schema.get("properties", {})
    text = "\n".join(m["content"] if isinstance(m["content"], str) else m["content"][0]["text"] for m in body["messages"])
    if "task" in props:
        instruction = text.rsplit("Instruction:", 1)[1].lower()
        if "sepia" in instruction:
            return {"task": "sepia"}  # not in the vocabulary: the client must refuse it
        return {"task": "color" if "invert" in instruction else "geometry"}
    if "editing_success" in props:  # the VIEScore questions the judge filter asks too
        return {"reasoning": "ok", "editing_success": 8, "over_editing": 6}
    return {"reasoning": "ok", "naturalness": 9, "artifacts": 4}


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv("CRISPEDIT_TEST_KEY", "sk-test-123")
    with LLMServer(responder=_answer) as s:
        yield s


def test_task_is_predicted_within_the_vocabulary(server, tmp_path):
    settings = llm_settings(server.url, "test-model", "CRISPEDIT_TEST_KEY")
    vocabulary = ("color", "geometry", "tone")
    got = predict_tasks(["Invert the colors", "flip it upside down", "make it sepia"], vocabulary, settings, tmp_path)
    assert got[0] == ("color", None) and got[1] == ("geometry", None)
    task, error = got[2]
    assert task is None and error  # "sepia" is outside the Literal: rejected after the client's retries
    count = server.count
    predict_tasks(["Invert the colors"], vocabulary, settings, tmp_path)
    assert server.count == count  # answered from the cache
    assert server.authorizations[0] == "Bearer sk-test-123"
    assert not any(b"sk-test-123" in f.read_bytes() for f in tmp_path.rglob("*") if f.is_file())


def _run(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_edit_predicts_the_task_and_eval_scores_with_the_mllm(server, tiny_config, pairs_dir, tmp_path, capsys):
    from crispedit.mgt.train import Trainer

    tiny_config.model.task_embeddings = True
    tiny_config.model.tasks = ("color", "geometry", "tone")
    Trainer(tiny_config, [pairs_dir], tmp_path / "run").train(max_steps=1)
    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(img)
    llm = ["--llm-base-url", server.url, "--llm-model", "test-model", "--llm-api-key-env", "CRISPEDIT_TEST_KEY"]
    assert _run(["edit", "--checkpoint", str(tmp_path / "run"), "--image", str(img), "--instruction", "invert the colors",
                 "--out", str(tmp_path / "o.png"), "--steps", "2", *llm]) == 0
    assert "task: color" in capsys.readouterr().err

    bench = tmp_path / "b.parquet"
    photo = image_struct(draw_photo(np.random.default_rng(0), 16, 16).astype(np.uint8))
    pq.write_table(pa.table({"source_image": pa.array([photo], type=IMAGE_TYPE), "instruction": ["flip it"]}), bench)
    assert _run(["eval", "--checkpoint", str(tmp_path / "run"), "--benchmark", str(bench), "--out-dir",
                 str(tmp_path / "ev"), "--steps", "2", *llm]) == 0
    row = pq.read_table(tmp_path / "ev" / "samples.parquet").to_pylist()[0]
    # SC = min(8, 6), PQ = min(9, 4), O = sqrt(SC * PQ)
    assert (row["mllm_semantics"], row["mllm_quality"]) == (6.0, 4.0)
    assert row["mllm_overall"] == pytest.approx(24 ** 0.5) and row["mllm_error"] is None
    judged = [b for b in server.requests if "editing_success" in str(b.get("response_format"))]
    assert judged and sum(p.get("type") == "image_url" for p in judged[0]["messages"][0]["content"]) == 2
    assert "flip it" in judged[0]["messages"][0]["content"][0]["text"]  # the judge_semantics.txt template, filled
