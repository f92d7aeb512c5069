"""The trainer config is a pydantic model like the recipe: unknown keys and wrong types are errors named by file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from crispedit.core.presets import BUNDLED
from crispedit.mgt.config import ConfigError, MGTConfig, apply_overrides


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_bundled_configs_load_and_round_trip(tmp_path: Path) -> None:
    for name in ("tiny", "small", "full", "finetune-released"):
        cfg = MGTConfig.load(BUNDLED / "mgt" / f"{name}.yaml")
        cfg.save(tmp_path / f"{name}.yaml")
        assert MGTConfig.load(tmp_path / f"{name}.yaml") == cfg


def test_every_problem_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  resolution: 64\n  transformr: {}\ntrain:\n  learning_rate: '1e-4'\nsample:\n  timestep_mode: steps\n")
    with pytest.raises(ConfigError) as raised:
        MGTConfig.load(path)
    found = [str(p) for p in raised.value.problems]
    assert f"{path}:3: model.transformr: unknown key" in found
    assert any(p.startswith(f"{path}:5: train.learning_rate: Input should be a valid number") for p in found)
    assert any(p.startswith(f"{path}:7: sample.timestep_mode: Input should be 'ratio', 'ratio_x1000' or 'step_index'") for p in found)


def test_values_are_not_coerced(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.use_ema: Input should be a valid boolean"):
        MGTConfig.load(write(tmp_path, "train:\n  use_ema: 1\n"))
    cfg = MGTConfig.load(write(tmp_path, "train:\n  learning_rate: 1\n  datasets: [a, {path: b, ratio: 2}]\nmodel:\n  tasks: [x, y]\n"))
    assert cfg.train.learning_rate == 1.0 and [d.path for d in cfg.train.datasets] == ["a", "b"] and cfg.model.tasks == ("x", "y")
    with pytest.raises(ValueError, match="learning_rate"):
        cfg.train.learning_rate = "fast"  # assignments are checked too


def test_overrides_are_checked_like_the_file() -> None:
    cfg = MGTConfig.load(BUNDLED / "mgt" / "tiny.yaml")
    assert apply_overrides(cfg, ["sample.steps=16"]).sample.steps == 16
    with pytest.raises(ConfigError, match=r"--set: sample.stepz: unknown key"):
        apply_overrides(cfg, ["sample.stepz=16"])


def test_the_train_command_reports_a_bad_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crispedit.cli import main

    path = write(tmp_path, "train:\n  max_stepz: 3\n")
    assert main(["train", str(tmp_path), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: train.max_stepz: unknown key" in err and "Traceback" not in err
