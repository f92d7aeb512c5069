"""Library notices (transformers' torchvision fall-back, diffusers' "kept in float32: []") go to
OUT/logs/libraries.log, not the console; ``-v`` leaves them on the console. A real --tiny build,
console captured at the file-descriptor level (what a terminal would show)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crispedit.cli import main
from tests.helpers.recipes import RECIPES

NOTICES = ("should be kept in float32", "requires torchvision")


@pytest.mark.slow
def test_library_notices_go_to_the_build_log_unless_verbose(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "quiet"
    assert main(["build", str(RECIPES / "style.yaml"), "--tiny", "--runner", "local", "--out", str(out), "--no-progress"]) == 0
    console = "".join(capfd.readouterr())
    assert not [n for n in NOTICES if n in console], console
    logged = (out / "logs" / "libraries.log").read_text()
    # diffusers says its notice for every model it casts; transformers' torchvision notice is said once per
    # process, so it is in this file only when no earlier test in the session loaded a processor
    assert NOTICES[0] in logged, logged
    assert "diffusers.models.modeling_utils" in logged  # the logger's name, so a reader can tell who said it



def test_verbose_leaves_the_libraries_on_the_console(tmp_path: Path) -> None:
    import logging

    from crispedit.core.storage import Output
    from crispedit.engine import _library_log_path

    logger = logging.getLogger("crispedit")
    before = logger.level
    try:
        logger.setLevel(logging.WARNING)
        assert _library_log_path(Output(str(tmp_path))) == str(tmp_path / "logs" / "libraries.log")
        logger.setLevel(logging.INFO)  # what -v sets
        assert _library_log_path(Output(str(tmp_path))) is None
    finally:
        logger.setLevel(before)


def test_routing_is_undone_after_the_build(tmp_path: Path) -> None:
    import logging
    import os

    from crispedit.core.library_logs import LOG_ENV, library_log

    diffusers = logging.getLogger("diffusers")
    before = list(diffusers.handlers)
    with library_log(tmp_path / "libraries.log"):
        assert os.environ[LOG_ENV] == str((tmp_path / "libraries.log").resolve())
        logging.getLogger("diffusers.models").warning("a notice")
    assert diffusers.handlers == before and LOG_ENV not in os.environ
    assert "WARNING diffusers.models: a notice" in (tmp_path / "libraries.log").read_text()
