"""Bundled presets (filter chains, judge prompts, trainer configs) are package data found by one function."""

from __future__ import annotations

from pathlib import Path

import pytest

from crispedit.core.presets import BUNDLED, PresetNotFound, bundled, find_preset


def test_bundled_names() -> None:
    assert bundled("filters") == ["basic", "ip2p", "mllm_judge", "ultraedit"]
    assert bundled("prompts") == ["judge_quality", "judge_semantics"]
    assert bundled("mgt") == ["finetune-released", "full", "small", "tiny"]


def test_a_name_is_a_file_in_the_given_folders_before_a_bundled_preset(tmp_path: Path) -> None:
    assert find_preset("filters", "basic") == BUNDLED / "filters" / "basic.yaml"
    mine = tmp_path / "filters"
    mine.mkdir()
    (mine / "basic.yaml").write_text("stages: []\n")
    assert find_preset("filters", "basic", [mine]) == mine / "basic.yaml"
    assert find_preset("prompts", "judge_quality.txt", [mine]) == BUNDLED / "filters" / "judge_quality.txt"


def test_an_existing_path_wins_and_a_missing_one_falls_back_to_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = tmp_path / "ip2p.yaml"
    chain.write_text("stages: []\n")
    assert find_preset("filters", chain) == chain
    monkeypatch.chdir(tmp_path)  # a checkout's spellings, from a folder that has none of them
    assert find_preset("filters", "filters/ultraedit.yaml") == BUNDLED / "filters" / "ultraedit.yaml"
    assert find_preset("mgt", "configs/mgt/tiny.yaml") == BUNDLED / "mgt" / "tiny.yaml"
    assert find_preset("mgt", "tiny") == BUNDLED / "mgt" / "tiny.yaml"


def test_a_name_only_search_ignores_files_of_that_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "basic").write_text("not a chain")
    assert find_preset("filters", "basic", paths=False) == BUNDLED / "filters" / "basic.yaml"


def test_an_unknown_name_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(PresetNotFound, match=r"no filters preset 'strict'.*bundled: basic, ip2p, mllm_judge, ultraedit"):
        find_preset("filters", "strict", [tmp_path])


def test_the_trainer_reads_its_bundled_config_by_name() -> None:
    from crispedit.mgt.config import MGTConfig, resolve_config

    assert MGTConfig.load(resolve_config("tiny")).is_tiny
