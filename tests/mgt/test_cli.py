"""`train`, `edit` and `eval` end to end through the argparse subcommands (tiny config)."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crispedit.mgt import cli
from crispedit.mgt.pipeline import EditPipeline


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained(pairs_dir, tiny_config_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert _run(["train", str(pairs_dir), "--config", str(tiny_config_path), "--output-dir", str(out), "--max-steps", "2"]) == 0
    return out


def test_train_resume_and_edit(trained, pairs_dir, tmp_path, capsys):
    capsys.readouterr()
    assert _run(["train", str(pairs_dir), "--config", "tiny", "--output-dir", str(trained), "--max-steps", "3", "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["tokens_per_second"] > 0
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(img)
    edited = tmp_path / "out.png"
    assert _run(["edit", "--checkpoint", str(trained), "--image", str(img), "--instruction", "make it gray",
                 "--out", str(edited), "--steps", "4", "--tau", "0.3", "--keyword", "gray"]) == 0
    assert Image.open(edited).size == (16, 16)
    assert _run(["edit", "--checkpoint", str(trained), "--image", str(img), "--instruction", "x", "--out",
                 str(edited), "--task", "sepia"]) == 2  # no task vectors in this model


def test_eval_metrics_are_exact_when_the_edit_is_the_target(trained, tmp_path):
    """Target = the checkpoint's own edit (same seed): L1 is 0 and CLIP-I / DINO are 1; another
    target scores worse. The metrics can fail."""
    rng = np.random.default_rng(1)
    source = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    edited = EditPipeline.from_checkpoint(trained)(source, "make it gray", steps=2, seed=7)
    other = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    bench = tmp_path / "bench.parquet"
    pq.write_table(pa.table({
        "id": ["same", "other"],
        "source_image": pa.array([{"bytes": _png(source), "path": None}] * 2, type=image),
        "target_image": pa.array([{"bytes": _png(edited), "path": None}, {"bytes": _png(other), "path": None}], type=image),
        "instruction": ["make it gray", "make it gray"],
        "target_caption": ["a gray picture", None],
    }), bench)
    # row i is edited with seed --seed + i: row 0 gets seed 7, as above
    assert _run(["eval", "--checkpoint", str(trained), "--benchmark", str(bench), "--out-dir", str(tmp_path / "ev"),
                 "--steps", "2", "--seed", "7"]) == 0
    rows = pq.read_table(tmp_path / "ev" / "samples.parquet").to_pylist()
    same, diff = rows
    assert same["id"] == "same" and same["l1"] == 0.0
    assert same["clip_i"] == pytest.approx(1.0, abs=1e-5) and same["dino"] == pytest.approx(1.0, abs=1e-5)
    assert diff["l1"] > 0.05 and diff["clip_i"] < same["clip_i"] and diff["dino"] < same["dino"]
    assert same["clip_t"] is not None and diff["clip_t"] is None  # no caption, no CLIP-T
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["summary"]["all"]["l1"] == pytest.approx(diff["l1"] / 2)


def test_task_inversion_from_the_cli(trained, pairs_dir, tmp_path, capsys):
    out = tmp_path / "inv"
    capsys.readouterr()
    assert _run(["train", str(pairs_dir), "--invert-task", "sepia", "--from", str(trained), "--output-dir", str(out),
                 "--max-steps", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "sepia" and summary["step"] == 2
    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(img)
    assert _run(["edit", "--checkpoint", str(out), "--image", str(img), "--instruction", "make it sepia",
                 "--out", str(tmp_path / "o.png"), "--steps", "2", "--task", "sepia"]) == 0
    assert _run(["edit", "--checkpoint", str(out), "--image", str(img), "--instruction", "x",
                 "--out", str(tmp_path / "o.png"), "--task", "nope"]) == 2


def test_cli_module_import_is_light():
    code = "import sys, crispedit.mgt.cli; print(any(m in sys.modules for m in ('torch', 'diffusers', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
