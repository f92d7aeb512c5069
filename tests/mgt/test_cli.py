"""`train`, `edit` and `eval` end to end through the argparse subcommands (tiny config)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from crispedit.mgt import cli


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_train_edit_eval(pairs_dir, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(["train", str(pairs_dir), "--config", str(tiny_config_path), "--output-dir", str(out), "--max-steps", "4"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 4
    assert _run(["train", str(pairs_dir), "--config", "tiny", "--output-dir", str(out), "--max-steps", "6", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 6

    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(img)
    edited = tmp_path / "out.png"
    assert _run(["edit", "--checkpoint", str(out), "--image", str(img), "--instruction", "make it gray",
                 "--out", str(edited), "--steps", "4", "--tau", "0.3", "--keyword", "gray"]) == 0
    assert Image.open(edited).size == (16, 16)

    report = tmp_path / "report.json"
    bench = pairs_dir / "data" / "train-00000.parquet"
    assert _run(["eval", "--checkpoint", str(out), "--benchmark", str(bench), "--out", str(report), "--steps", "2", "--limit", "2"]) == 0
    data = json.loads(report.read_text())
    assert data["n"] == 2 and set(data["metrics"]) == {"l1", "clip_i", "dino", "clip_t"}
    assert 0 <= data["metrics"]["l1"] <= 1 and all(-1 <= data["metrics"][k] <= 1 for k in ("clip_i", "dino", "clip_t"))


def test_cli_module_import_is_light():
    code = "import sys, crispedit.mgt.cli; print(any(m in sys.modules for m in ('torch', 'diffusers', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
