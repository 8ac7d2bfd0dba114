# The commands a newcomer and CI run (README's first lines); `make help` lists them.
#
#   make test     set up, then pass ruff, mypy and the whole test suite (what .ci/run runs)
#   make run      set up, then run the job on the built-in generator

VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: help test lint run setup system-packages js js-test

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

# The JS client's packages (maplibre-gl, ol, leaflet for the adapters and the browser
# tests), from the npm registry, as the lockfile pins them; again when the lockfile changes.
clients/js/node_modules/.installed: clients/js/package-lock.json
	npm ci --prefix clients/js --no-audit --no-fund
	@touch $@

js: clients/js/node_modules/.installed

js-test: js
	npm test --prefix clients/js

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup system-packages js lint js-test
	$(BIN)/pytest

run: setup
	$(BIN)/tilepipe run
