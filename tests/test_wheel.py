"""The wheel: built with `python -m build`, installed into a fresh venv, it builds recipes/style.yaml with its bundled presets.

The venv sees the system's packages (torch is not downloaded again) but not this checkout:
the command runs from a temporary folder with PYTHONPATH unset, on a copy of the recipe, so
the `include: basic` chain can only come from the wheel's package data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.recipes import RECIPES, REPO

#: What the wheel is built from: the package and what setuptools reads.
SOURCES = ("crispedit", "pyproject.toml", "README.md")


@pytest.mark.slow
def test_an_installed_wheel_builds_the_style_recipe_with_its_presets(tmp_path: Path) -> None:
    tree = tmp_path / "tree"  # a copy, so build/ and *.egg-info never land in the checkout
    tree.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(source, tree / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = dict(capture_output=True, text=True, env=env, timeout=900)
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(tree)], **run)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("crispedit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, **run)
    python, crispedit = venv / "bin" / "python", venv / "bin" / "crispedit"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], **run)
    assert installed.returncode == 0, installed.stderr[-2000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    recipe = shutil.copy(RECIPES / "style.yaml", work / "style.yaml")
    where = subprocess.run([str(python), "-c", "import crispedit; print(crispedit.__file__)"], cwd=work, **run)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    done = subprocess.run([str(crispedit), "build", str(recipe), "--tiny", "--runner", "local", "--out", str(work / "out"), "--no-progress"],
                          cwd=work, **{**run, "env": {**env, "OMP_NUM_THREADS": "1"}})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["instruct", "style", "pixel_change", "clip_filter", "select"]
    assert (work / "out" / "hist-pixel_l1.png").is_file()
    # the bundled chains and trainer configs by bare name, from the wheel
    names = subprocess.run([str(python), "-c", "from crispedit.core.presets import find_preset as f; "
                            "print(f('filters', 'ip2p'), f('prompts', 'judge_semantics.txt'), f('mgt', 'tiny'))"], cwd=work, **run)
    assert names.returncode == 0 and names.stdout.count(str(venv)) == 3, names.stdout + names.stderr
