"""Models' terms on the dataset card, and publish refusing a licence they contradict unless --force-license."""

from __future__ import annotations

from pathlib import Path

import pytest

from crispedit.cli import main
from crispedit.models.terms import FLUX_DEV_NC, applied_terms, license_conflicts, terms_for
from tests.helpers.recipes import write_recipe

RECIPE = """
name: kontext-terms
seed: 0
license: apache-2.0
output: {dir: out, shard_size: 4}
source: {kind: skimage, photos: [astronaut], edits_per_image: 1, max_side: 64}
stages:
  - {kind: instruct, backend: template}
  - {kind: edit_model, diffusers: {pipeline: FluxKontextPipeline}}
"""


def test_terms_are_found_for_the_ways_stages_report_models() -> None:
    assert terms_for("tiny:black-forest-labs/FLUX.1-Kontext-dev") is FLUX_DEV_NC
    assert terms_for("black-forest-labs/FLUX.1-Kontext-dev@af58063aa431f4d2bbc11ae46f57451d4416a170") is FLUX_DEV_NC
    assert terms_for("gpt-image-1.5 @ https://api.openai.com/v1").output_terms
    assert terms_for("Qwen/Qwen-Image-Edit-2509@x").license == "apache-2.0"
    applied = applied_terms(["tiny:black-forest-labs/FLUX.1-Kontext-dev", "some/unknown@1"])
    assert list(applied) == ["tiny:black-forest-labs/FLUX.1-Kontext-dev"]
    assert license_conflicts("apache-2.0", applied) and not license_conflicts("other", applied)
    assert not license_conflicts("apache-2.0", applied_terms(["Qwen/Qwen-Image-Edit-2509@x"]))


@pytest.mark.slow
def test_a_non_commercial_model_is_on_the_card_and_a_permissive_license_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "build"
    assert main(["build", str(write_recipe(tmp_path, RECIPE)), "--tiny", "--runner", "local", "--out", str(out), "--no-progress"]) == 0
    assert main(["publish", str(out), "--dry-run", str(tmp_path / "refused")]) == 2
    assert "--force-license" in capsys.readouterr().err
    assert main(["publish", str(out), "--dry-run", str(tmp_path / "forced"), "--force-license"]) == 0
    import html
    import re

    from markdown_it import MarkdownIt

    card = (tmp_path / "forced" / "README.md").read_text()
    section = card.split("## Terms that apply", 1)[1].split("\n## ", 1)[0]
    terms = html.unescape(re.sub(r"<[^>]+>", "", MarkdownIt("commonmark").enable("table").render(section)))  # as a reader sees it
    assert "FLUX.1 [dev] Non-Commercial License" in terms and "non-commercial use only" in terms and "competes with FLUX.1" in terms
