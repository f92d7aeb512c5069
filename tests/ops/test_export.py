"""``crispedit export``: preference pairs from a best-of-3 build (select losers and judge rejects), read back by ``datasets``."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image

from crispedit.cli import main
from crispedit.engine import build
from crispedit.ops.export import ExportError, export_preference
from crispedit.recipe import load_plan
from tests.helpers.llm_server import LLMServer, request_schema
from tests.helpers.recipes import write_recipe

RECIPE = """
name: best-of-3
seed: 0
output: {{dir: out, shard_size: 2}}
execution: {{runner: local}}
plugins: [tests.helpers.contract_stages]
source: {{kind: skimage, photos: [astronaut, coffee, chelsea], max_side: 32, edits_per_image: 1}}
stages:
  - kind: candidates          # three seeded candidates per photo
    n: 3
  - kind: pixel_change        # scores pixel_l1 for select; keeps every candidate
    min_l1: 0.0
  - kind: judge
    llm: {{base_url: "{url}", model: local-judge, api_key_env: null, timeout: 2, max_retries: 1}}
    min_semantics: 5
  - kind: select
    score: pixel_l1
"""


class SiblingJudge:
    """A judge that refuses the second candidate of each photo to reach it and passes the others, lower for the third.

    Ids (so the candidates' seeded brightness) change with the server's port, which the recipe names; verdicts drawn
    from the arrival order among a photo's siblings (the source image in the semantics request says which photo)
    keep the counts the same on every run: per photo one judge reject, one select loser, one kept pair.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: Counter[bytes] = Counter()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        if "naturalness" in request_schema(body)["properties"]:
            return {"reasoning": "clean", "naturalness": 9, "artifacts": 9}
        urls = [p["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
                for p in m["content"] if p["type"] == "image_url"]
        source = base64.b64decode(urls[0].split(",", 1)[1])
        with self.lock:
            arrival = self.seen[source]
            self.seen[source] += 1
        return {"reasoning": "looked", "editing_success": (9, 3, 8)[arrival % 3], "over_editing": 9}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("export")
    with LLMServer(responder=SiblingJudge()) as server:
        plan = load_plan(write_recipe(folder, RECIPE.format(url=server.url)), out=folder / "out")
        build(plan, runner="local", progress=False)
    yield folder / "out"


def table(out: Path, kind: str) -> list[dict[str, Any]]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def expected_pairs(out: Path, score: str) -> set[tuple[str, str, str]]:
    """From the build's own rows: each kept candidate against each sibling the judge or select refused, worse by ``score``."""
    kept, lost = table(out, "data"), [r for r in table(out, "rejects") if r["stage"] in ("judge", "select")]
    return {(k["id"], r["id"], "best_of_n" if r["stage"] == "select" else "filter_reject")
            for k in kept for r in lost if r["parent_id"] == k["parent_id"] and k[score] > r[score]}


def test_the_build_has_select_losers_and_judge_rejects(built: Path) -> None:
    rejects = table(built, "rejects")
    assert len(table(built, "data")) == 3 and len(rejects) == 6  # best of 3 for each of 3 photos
    assert {r["stage"] for r in rejects} == {"judge", "select"}, "the judge should refuse some candidates, select the rest"


def test_preference_pairs_are_the_expected_ones_and_load_with_datasets(built: Path, tmp_path: Path) -> None:
    import datasets

    report = export_preference(built, tmp_path / "pairs")
    pairs = datasets.load_dataset("parquet", data_dir=str(tmp_path / "pairs" / "data"), split="train")
    assert list(pairs.features)[:4] == ["images", "prompt", "chosen", "rejected"]  # TRL's vision DPO columns
    assert isinstance(pairs.features["chosen"], datasets.Image) and isinstance(pairs[0]["rejected"], Image.Image)
    assert {(r["chosen_id"], r["rejected_id"], r["origin"]) for r in pairs} == expected_pairs(built, "pixel_l1")
    kept = {r["parent_id"]: r["pixel_l1"] for r in table(built, "data")}
    worse = [r for r in table(built, "rejects") if r["stage"] == "select" and r["pixel_l1"] < kept[r["parent_id"]]]
    assert report["rows"] == len(pairs) and report["pairs"]["best_of_n"] == len(worse)  # a loser tied with the winner is no pair
    rows = {r["id"]: r for r in table(built, "data") + table(built, "rejects")}
    raw = pq.read_table(sorted((tmp_path / "pairs" / "data").glob("*.parquet"))[0]).to_pylist()[0]
    chosen, rejected = rows[raw["chosen_id"]], rows[raw["rejected_id"]]
    assert raw["chosen"]["bytes"] == chosen["target_image"]["bytes"] and raw["rejected"]["bytes"] == rejected["target_image"]["bytes"]
    assert raw["images"][0]["bytes"] == chosen["source_image"]["bytes"] and raw["prompt"] == chosen["instruction"]
    assert raw["margin"] == pytest.approx(chosen["pixel_l1"] - rejected["pixel_l1"]) and raw["margin"] > 0
    skipped = sum(report["skipped"].values())
    assert len(pairs) + skipped == 6  # every (kept, refused sibling) pair is exported or counted


def test_the_margin_comes_from_the_named_score_and_a_minimum_drops_close_pairs(built: Path, tmp_path: Path) -> None:
    by_judge = export_preference(built, tmp_path / "judge", score="judge_semantics")
    got = pq.read_table(tmp_path / "judge" / "data").to_pylist()
    assert {(r["chosen_id"], r["rejected_id"], r["origin"]) for r in got} == expected_pairs(built, "judge_semantics")
    assert by_judge["pairs"].get("filter_reject") == 3 and all(r["score"] == "judge_semantics" for r in got)
    export_preference(built, tmp_path / "l1")
    margins = sorted(r["margin"] for r in pq.read_table(tmp_path / "l1" / "data").to_pylist())
    assert margins[0] < margins[-1]  # pixel_l1 margins of different photos differ
    cut = export_preference(built, tmp_path / "cut", min_margin=margins[-1])
    top = margins.count(margins[-1])
    assert cut["rows"] == top and cut["skipped"][f"margin below {margins[-1]:g}"] == len(margins) - top


def test_the_diffusion_dpo_layout_has_pick_a_pic_columns(built: Path, tmp_path: Path) -> None:
    import datasets

    export_preference(built, tmp_path / "dpo", layout="diffusion-dpo")
    dpo = datasets.load_dataset("parquet", data_dir=str(tmp_path / "dpo" / "data"), split="train")
    assert list(dpo.features)[:5] == ["caption", "jpg_0", "jpg_1", "label_0", "source_image"]
    row = dpo[0]
    assert row["label_0"] == 1.0 and Image.open(io.BytesIO(row["jpg_0"])).size == row["source_image"].size  # raw bytes, as train.py opens them
    target = {r["id"]: r for r in table(built, "data")}[row["chosen_id"]]
    assert row["jpg_0"] == target["target_image"]["bytes"] and row["caption"] == target["instruction"]


def test_the_target_is_claimed_like_every_output(built: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="this command reads"):
        export_preference(built, built / "pairs")
    export_preference(built, tmp_path / "pairs")
    export_preference(built, tmp_path / "pairs")  # the same request again: replaced without asking
    with pytest.raises(ExportError, match="--overwrite"):
        export_preference(built, tmp_path / "pairs", min_margin=0.05)
    export_preference(built, tmp_path / "pairs", min_margin=0.05, overwrite=True)
    assert json.loads((tmp_path / "pairs" / "export.json").read_text())["min_margin"] == 0.05
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not written by crispedit"):
        export_preference(built, tmp_path / "mine", overwrite=True)


def test_an_unknown_score_is_one_line_and_exit_2(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(built), "--preference", "--score", "aesthetic", "--to", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the build has no score 'aesthetic'") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
