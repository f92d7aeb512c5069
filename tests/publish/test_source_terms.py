"""Source licences and a recipe's `terms:` on the dataset card, and publish refusing a licence they contradict.

A Parquet source with a licence column is built for real (the ``copy`` stage, the local
runner), published as a dry run and to the local Hub through huggingface_hub's client; the
card is read as a reader sees it (rendered by markdown-it-py, tags stripped).
"""

from __future__ import annotations

import html
import io
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crispedit.cli import main
from crispedit.core.located import RecipeError
from crispedit.models.terms import FLUX_DEV_NC, TermsDeclaration, TermsError, applied_terms, declared_terms, license_conflicts
from crispedit.recipe import load_plan
from tests.helpers.hub_server import FakeHub
from tests.helpers.recipes import write_recipe

#: One source row per entry: 3 non-commercial, 2 attribution, 1 public domain, 2 with no licence.
ROW_LICENSES = ["cc-by-nc-4.0", "cc-by-4.0", None, "cc-by-nc-4.0", "cc0-1.0", "", "cc-by-4.0", "cc-by-nc-4.0"]


def write_source(folder: Path) -> Path:
    cells = []
    for i in range(len(ROW_LICENSES)):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 24), (i * 30, 200 - i * 20, 90)).save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": f"{i}.png"})
    table = pa.table({
        "image": pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "caption": [f"photo {i}" for i in range(len(ROW_LICENSES))],
        "license": pa.array(ROW_LICENSES, pa.string()),
    })
    path = folder / "photos.parquet"
    pq.write_table(table, path, row_group_size=3)
    return path


def terms_text(card: str) -> str:
    """The Terms that apply section as a reader sees it."""
    from markdown_it import MarkdownIt

    section = card.split("## Terms that apply", 1)[1].split("\n## ", 1)[0]
    return html.unescape(re.sub(r"<[^>]+>", "", MarkdownIt("commonmark").enable("table").render(section)))


@pytest.fixture
def licensed_build(tmp_path: Path) -> Path:
    source = write_source(tmp_path)
    recipe = write_recipe(tmp_path, f"""
name: licensed
license: mit
output: {{dir: out, shard_size: 3}}
source: {{kind: parquet, files: [{source}], license_column: license, max_side: 32}}
stages: [{{kind: copy}}]
""")
    out = tmp_path / "build"
    assert main(["build", str(recipe), "--runner", "local", "--out", str(out), "--no-progress"]) == 0
    return out


def test_non_commercial_source_rows_are_on_the_card_and_refuse_a_permissive_license(
    licensed_build: Path, hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    import datasets

    assert main(["publish", str(licensed_build), "--dry-run", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "license: mit contradicts" in err and "3 source rows are under cc-by-nc-4.0" in err and "--force-license" in err
    assert not (tmp_path / "refused").exists()
    assert main(["publish", str(licensed_build), "--repo-id", "org/licensed"]) == 2  # the Hub is never asked
    assert "org/licensed" not in hub.repos

    assert main(["publish", str(licensed_build), "--repo-id", "org/licensed", "--force-license"]) == 0
    card = hub.content("org/licensed", "README.md").decode()
    terms = terms_text(card)
    assert "3 source rows are under cc-by-nc-4.0: non-commercial." in terms
    assert "2 source rows carry no licence (unknown)" in terms
    counts = dict(re.findall(r"^\| `([^`]+)` \| (\d+) \|", card.split("### Source images", 1)[1], flags=re.MULTILINE))
    assert counts == {"cc-by-nc-4.0": "3", "cc-by-4.0": "2", "cc0-1.0": "1", "unknown": "2"}
    assert "Contradicted by the terms that apply" in card and "--force-license" in card

    # the column loads with datasets, each row carrying its own source row's licence
    assert main(["publish", str(licensed_build), "--dry-run", str(tmp_path / "tree"), "--force-license"]) == 0
    pairs = datasets.load_dataset(str(tmp_path / "tree"), split="train")
    assert pairs.features["source_license"] == datasets.Value("string")
    refs = [json.loads(p)["source"]["ref"] for p in pairs["provenance"]]  # photos.parquet:row N
    assert pairs["source_license"] == [ROW_LICENSES[int(ref.rsplit(" ", 1)[1])] or "unknown" for ref in refs]
    assert Counter(pairs["source_license"]) == {"cc-by-nc-4.0": 3, "cc-by-4.0": 2, "cc0-1.0": 1, "unknown": 2}


def test_a_non_commercial_license_is_not_contradicted(licensed_build: Path, tmp_path: Path) -> None:
    recipe = licensed_build / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("license: mit", "license: cc-by-nc-4.0"))
    assert main(["publish", str(licensed_build), "--dry-run", str(tmp_path / "tree")]) == 0
    card = (tmp_path / "tree" / "README.md").read_text()
    assert "Contradicted" not in card and "3 source rows are under cc-by-nc-4.0" in terms_text(card)


# --- a recipe's terms: ----------------------------------------------------------------------

KONTEXT = """
name: kontext-override
seed: 0
license: apache-2.0
output: {dir: out, shard_size: 4}
source: {kind: skimage, photos: [astronaut], edits_per_image: 1, max_side: 64}
stages:
  - {kind: instruct, backend: template}
  - {kind: edit_model, diffusers: {pipeline: FluxKontextPipeline}}
"""
BOUGHT = """
terms:
  black-forest-labs/FLUX.1-Kontext-dev:
    name: FLUX.1 [dev] self-serve commercial licence
    non_commercial: false
    reason: commercial licence bought from Black Forest Labs, order 1234
"""


def test_lifting_a_recorded_restriction_needs_a_reason_and_keys_must_name_a_used_model(tmp_path: Path) -> None:
    silent = KONTEXT + "terms:\n  black-forest-labs/FLUX.1-Kontext-dev: {non_commercial: false}\n"
    with pytest.raises(RecipeError, match="give a `reason:`") as error:
        load_plan(write_recipe(tmp_path, silent, "silent.yaml"), tiny=True)
    assert error.value.problems[0].path == ("terms", "black-forest-labs/FLUX.1-Kontext-dev")
    misspelt = KONTEXT + "terms:\n  black-forest-labs/FLUX.1-kontext-dev: {license: other, non_commercial: true}\n"
    with pytest.raises(RecipeError, match="no stage uses model 'black-forest-labs/FLUX.1-kontext-dev'"):
        load_plan(write_recipe(tmp_path, misspelt, "misspelt.yaml"))
    with pytest.raises(RecipeError, match="without revision"):
        load_plan(write_recipe(tmp_path, KONTEXT + "terms:\n  black-forest-labs/FLUX.1-Kontext-dev@abc: {license: other}\n", "rev.yaml"))
    assert load_plan(write_recipe(tmp_path, KONTEXT + BOUGHT, "bought.yaml")).recipe.terms  # a reason given: it stands

    # what an override keeps and lifts
    bought = declared_terms("black-forest-labs/FLUX.1-Kontext-dev", TermsDeclaration(non_commercial=False, reason="bought"), FLUX_DEV_NC)
    assert not bought.non_commercial and bought.output_terms == FLUX_DEV_NC.output_terms and bought.loosened == ("non-commercial use only",)
    assert bought.origin == "overridden by the recipe" and bought.recorded is FLUX_DEV_NC
    with pytest.raises(TermsError):
        declared_terms("black-forest-labs/FLUX.1-Kontext-dev", TermsDeclaration(output_use=[]), FLUX_DEV_NC)
    new = applied_terms(["acme/editor@1"], {"acme/editor": TermsDeclaration(license="cc-by-nc-4.0")})["acme/editor@1"]
    assert new.non_commercial and new.origin == "declared by the recipe" and license_conflicts("mit", {"acme/editor@1": new})
    with pytest.raises(ValueError, match="at least one"):
        TermsDeclaration(reason="nothing else")


@pytest.mark.slow
def test_a_recipe_override_is_on_the_card_and_publish_follows_it(tmp_path: Path) -> None:
    out = tmp_path / "build"
    recipe = write_recipe(tmp_path, KONTEXT + BOUGHT)
    assert main(["build", str(recipe), "--tiny", "--runner", "local", "--out", str(out), "--no-progress"]) == 0
    assert main(["publish", str(out), "--dry-run", str(tmp_path / "tree")]) == 0  # apache-2.0 no longer contradicted
    terms = terms_text((tmp_path / "tree" / "README.md").read_text())
    assert "overridden by the recipe: commercial licence bought from Black Forest Labs, order 1234" in terms
    assert "crispedit records: FLUX.1 [dev] Non-Commercial License v1.1.1, non-commercial only" in terms
    assert "lifts: non-commercial use only" in terms
    assert "competes with FLUX.1" in terms  # the clause on the outputs was not lifted: it still applies
    assert "non-commercial use only (FLUX" not in terms
