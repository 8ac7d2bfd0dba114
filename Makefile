# The commands a newcomer and CI run (README's first lines); `make help` lists them.
#
#   make test     set up, then pass ruff, mypy and the whole test suite (what .ci/run runs)
#   make run      set up, then run the job on the built-in generator

VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: help test lint run setup system-packages

help:
	@sed -n 's/^#   //p' Makefile

# The virtual environment, rebuilt when the dependencies change.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: $(VENV)/.installed

# Debian packages the tests drive as real parts (Prometheus); installed when root.
system-packages:
	@tests/system-packages.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup system-packages lint
	$(BIN)/pytest

run: setup
	$(BIN)/tilepipe run
