"""recaption through the shared LLM client over real HTTP (tests/helpers/llm_server.py), and its offline template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crispedit.core.stage import BuildContext
from crispedit.editors.recaption import RecaptionParams, RecaptionStage
from crispedit.engine.run import apply_stage
from tests.helpers.llm_server import LLMServer
from tests.helpers.stage_cases import pairs


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """A vision model that sees the pair disagree with the original instruction (and the second pair unusable)."""
    text = json.dumps(body)
    usable = "nothing happens" not in text and text.count("data:image/") == 2
    return {"usable": usable, "changes": ["the square turned blue"], "original_matches": "no",
            "instruction_long": "turn the bright square blue", "instruction_short": "square blue", "edit_objects": ["square"],
            "instruction_long_zh": "把方块变成蓝色", "instruction_short_zh": "方块变蓝"}


def test_the_pair_is_recaptioned_the_original_kept_and_an_unusable_pair_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECAP_KEY", "sk-recap")
    with LLMServer(responder=answer) as server:
        params = RecaptionParams.model_validate({"backend": "openai", "policy": "mismatch", "languages": ["zh"], "llm": {
            "base_url": server.url, "model": "vision", "api_key_env": "RECAP_KEY", "backoff_initial": 0.01}})
        stage = RecaptionStage(params, BuildContext("t", "t", 0, cache_dir=tmp_path))
        stage.setup()
        inputs = pairs(2)
        inputs[1].instruction = "nothing happens"
        out = apply_stage(stage, "recaption", inputs, batch_size=8)
    first, second = out
    assert (first.instruction, first.instruction_original, first.instruction_short) == ("turn the bright square blue", "make it brighter", "square blue")
    assert json.loads(first.instruction_translations) == {"zh": {"long": "把方块变成蓝色", "short": "方块变蓝"}}
    assert first.scores["recaption_match"] == 0.0 and first.edit_objects == ["square"]
    assert second.reject is not None and second.reject.reason.startswith("recaption-unusable")


def test_tiny_writes_the_forms_from_the_original_offline() -> None:
    params = RecaptionParams.model_validate({"llm": {"base_url": "http://127.0.0.1:9/v1", "model": "vision"}})
    stage = RecaptionStage(params, BuildContext("t", "t", 0, tiny=True))
    stage.setup()
    out = apply_stage(stage, "recaption", pairs(1), batch_size=8)
    assert (out[0].instruction, out[0].instruction_original, out[0].instruction_short) == ("make it brighter",) * 3
