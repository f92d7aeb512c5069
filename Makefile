# Two set-up commands for a fresh CPU machine (see README.md):
#   make quickstart   installs crispedit and builds recipes/quickstart.yaml (offline, CPU, local Ray)
#   make test         installs crispedit with its test tools and runs the test suite
# CPU torch is installed first, pinned, so nothing pulls a CUDA build.

PYTHON ?= python3
TORCH ?= torch==2.13.0
# pytest-xdist workers: every test makes its own folders, servers on free ports and Ray instance.
PYTEST_WORKERS ?= 2

.PHONY: install install-test quickstart test test-fast lint docs bench

install:
	$(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e .

install-test:
	$(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e ".[test]"

quickstart: install
	$(PYTHON) -m crispedit.cli build recipes/quickstart.yaml

test: install-test lint
	$(PYTHON) -m pytest -q -n $(PYTEST_WORKERS)

# The inner loop: no install, no slow tests (builds under Ray, SIGKILL runs, browsers).
test-fast:
	$(PYTHON) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow"

lint:
	$(PYTHON) -m ruff check .

# docs/reference.md is generated from the code; a test fails when it is stale.
docs:
	$(PYTHON) -m crispedit.recipe.reference > docs/reference.md

bench:
	$(PYTHON) benchmarks/overhead.py

# Small synthetic clips (and broken files) where recipes/video.yaml looks for videos.
.PHONY: video-demo
video-demo:
	$(PYTHON) -m crispedit.video.demo out/video_demo/videos
