# Two set-up commands for a fresh CPU machine (see README.md):
#   make quickstart   installs crispedit and builds recipes/quickstart.yaml (offline, CPU, local Ray)
#   make test         installs crispedit with its test tools and runs the test suite
# CPU torch is installed first, pinned, so nothing pulls a CUDA build.

PYTHON ?= python3
TORCH ?= torch==2.13.0

.PHONY: install install-test quickstart test bench

install:
	$(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e .

install-test:
	$(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e ".[test]"

quickstart: install
	$(PYTHON) -m crispedit.cli build recipes/quickstart.yaml

test: install-test
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) benchmarks/overhead.py
