# The two commands of the README, and the checks CONTRIBUTING.md describes. Each first runs the idempotent set-up (seconds when nothing is missing).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test setup

demo: setup
	$(VENV)/bin/cfpo demo

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

setup:
	@bash scripts/setup.sh
