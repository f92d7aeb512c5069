"""edit_model's editmgt backend: the trainer's tiny random-init EditMGT as a generator."""

from __future__ import annotations

import pytest

from crispedit.core.stage import BuildContext
from crispedit.editors.edit_model import EditModelParams, EditModelStage
from crispedit.engine.run import apply_stage
from tests.helpers.stage_cases import pairs


@pytest.mark.slow
def test_a_trained_editmgt_makes_seeded_candidates_the_same_bytes_again() -> None:
    def run() -> list:
        params = EditModelParams.model_validate({"backend": "editmgt", "candidates": 2, "editmgt": {"checkpoint": "tiny"}})
        stage = EditModelStage(params, BuildContext("t", "t", 0, tiny=True))
        stage.setup()
        return [s for s in apply_stage(stage, "edit_model", pairs(1), batch_size=8) if s.alive]

    first, again = run(), run()
    assert len(first) == 2 and [s.target_image.tobytes() for s in first] == [s.target_image.tobytes() for s in again]
    assert all(s.target_image.shape == s.source_image.shape for s in first)  # the window and its edit, pixel-aligned
    assert first[0].provenance["edit_model"]["seed"] != first[1].provenance["edit_model"]["seed"]
