# The two commands of the README (demo, test), and the checks CONTRIBUTING.md describes. Each first runs the
# idempotent set-up (seconds when nothing is missing).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint fmt setup

demo: setup
	$(VENV)/bin/cfpo demo

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# the tests that take seconds: no vLLM server, DeepSpeed engine or stack
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

# what CI checks before the tests: lint, formatting, types, the import rule
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q tests/test_import_contract.py

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

setup:
	@bash scripts/setup.sh
