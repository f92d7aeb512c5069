"""``crispedit report``: survival curves and knees on planted score distributions, agreement checked against scipy and
scikit-learn on the same vectors, an audit set of human labels, and ``refilter --threshold-from-survival``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from crispedit.cli import main
from crispedit.engine import build
from crispedit.ops.agreement import kappa, knee, spearman, survival
from crispedit.ops.report import report
from crispedit.recipe import load_plan
from tests.helpers.contract_stages import GOOD, POOR
from tests.helpers.recipes import write_recipe

PLANTED = """
name: planted
seed: 3
plugins: [tests.helpers.contract_stages]
output: {dir: out, shard_size: 16, image_format: png}
source: {kind: skimage, photos: [astronaut, chelsea, coffee, rocket, motorcycle], max_side: 24}
stages:
  - kind: candidates
    n: 12
  - kind: planted
    min_a: 1.0
"""


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("planted")
    out = folder / "out"
    build(load_plan(write_recipe(folder, PLANTED), out=out), runner="local", progress=False)
    return out


def all_rows(out: Path) -> list[dict]:
    return [r for kind in ("data", "rejects") for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.mark.slow  # the planted build
def test_the_knee_of_a_planted_bimodal_score_lies_between_its_modes(planted: Path) -> None:
    found = report(planted)
    a = found["scores"]["planted_a"]
    assert a["scored"] == 60 and a["threshold"] == 1.0
    assert POOR[1] - 0.5 <= a["knee"] <= GOOD[0], a  # the end of the poor mass, before the good one begins
    values = np.array([r["planted_a"] for r in all_rows(planted)])
    assert a["kept_at_knee"] == pytest.approx(np.mean(values >= a["knee"]))
    assert a["kept_at_threshold"] == pytest.approx(np.mean(values >= 1.0))
    # the PNG is a real image, and report.json is what was returned
    with Image.open(planted / "survival-planted_a.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert json.loads((planted / "report.json").read_text()) == json.loads(json.dumps(found))


def test_survival_and_knee_on_known_curves() -> None:
    curve = survival(np.array([1.0, 2.0, 2.0, 4.0, np.nan]))
    assert curve.thresholds.tolist() == [1.0, 2.0, 4.0] and curve.kept.tolist() == [1.0, 0.75, 0.25]
    assert knee(np.array([0.0, 1.0]), np.array([1.0, 0.0])) is None and survival(np.array([np.nan])).knee is None
    # an L-shaped curve: flat to 5, then a cliff; the knee is at the corner
    x = np.arange(11.0)
    assert knee(x, np.where(x <= 5, 1.0 - x * 0.01, 0.0)) == 5.0


@pytest.mark.slow  # the planted build
def test_spearman_and_kappa_equal_scipy_and_scikit_learn_on_the_same_vectors(planted: Path) -> None:
    found = report(planted)
    pair = found["agreement"][0]
    assert (pair["a"], pair["b"]) == ("planted_a", "planted_b")
    rows = all_rows(planted)
    a, b = np.array([r["planted_a"] for r in rows]), np.array([r["planted_b"] for r in rows])
    assert pair["spearman"] == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert pair["cut_a"] == 1.0 and pair["cut_b"] == found["scores"]["planted_b"]["knee"]
    assert pair["kappa"] == pytest.approx(cohen_kappa_score(a >= pair["cut_a"], b >= pair["cut_b"]), abs=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.random(30) < rng.random(), rng.random(30) < rng.random()
        if len(set(x.tolist() + y.tolist())) == 2:  # scikit-learn answers nan when both raters use one class only
            assert kappa(x, y) == pytest.approx(cohen_kappa_score(x, y), abs=1e-12)
        u, v = rng.random(12), rng.random(12)
        assert spearman(u, v)[0] == pytest.approx(spearmanr(u, v).statistic, abs=1e-12)


@pytest.mark.slow  # the planted build
def test_an_audit_set_of_human_labels(planted: Path, tmp_path: Path) -> None:
    rows = all_rows(planted)
    # the "human" says good exactly when the pair came from the good mode, and labels one id the build does not have
    labels = [{"id": r["id"], "label": r["planted_a"] >= GOOD[0]} for r in rows] + [{"id": "not-a-row", "label": True}]
    audit = tmp_path / "audit.parquet"
    pq.write_table(pa.Table.from_pylist(labels), audit)
    found = report(planted, audit, plots=False)["audit"]
    assert found["labelled"] == 61 and found["matched"] == 60
    a = found["scores"]["planted_a"]
    truth = np.array([r["planted_a"] >= GOOD[0] for r in rows])
    predicted = np.array([r["planted_a"] >= 1.0 for r in rows])
    tn, fp, fn, tp = confusion_matrix(truth, predicted, labels=[False, True]).ravel()
    assert a["confusion"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn} and fn == 0
    assert a["accuracy"] == pytest.approx(np.mean(truth == predicted))
    assert a["kappa"] == pytest.approx(cohen_kappa_score(truth, predicted))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"row": [1]}), bad)
    assert main(["report", str(planted), "--audit", str(bad)]) == 2


@pytest.mark.slow  # the planted build
def test_refilter_applies_the_suggested_threshold(planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(planted), "--json"]) == 0
    knee_a = json.loads(capsys.readouterr().out)["scores"]["planted_a"]["knee"]
    assert main(["refilter", str(planted), "--threshold-from-survival", "planted_a", "--to", str(tmp_path / "k"), "--json"]) == 0
    kept = [r["planted_a"] for f in sorted((tmp_path / "k" / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    every = [r["planted_a"] for r in all_rows(planted)]
    assert sorted(kept) == sorted(v for v in every if v >= knee_a) and kept
    assert main(["refilter", str(planted), "--threshold-from-survival", "nope", "--to", str(tmp_path / "n")]) == 2
    assert main(["refilter", str(planted), "--to", str(tmp_path / "n")]) == 2
