# The commands people type. Everything installs into .venv from the package registries.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast soak lint format bench schemas clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install cxstream with its dev extra

run: $(STAMP) ## embedded broker + worker + simulated traffic on SQLite; Ctrl-C stops all
	$(BIN)/cxstream demo

test: $(STAMP) ## the whole suite: unit, property, integration (real broker, SQLite, PostgreSQL, Prometheus)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## unit and property tests only
	$(BIN)/python -m pytest -q tests/unit tests/property

soak: $(STAMP) ## a million events through one worker; its memory must stay flat (not part of make test)
	$(BIN)/python -m pytest -q -n0 -s --soak tests/integration/test_soak.py

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## throughput/latency benchmark; writes docs/benchmarks.{md,json,png}
	$(BIN)/python -m bench

schemas: $(STAMP) ## regenerate the published JSON Schemas of every topic record
	$(BIN)/cxstream schemas --out schemas/json

clean:
	rm -rf $(VENV) var cxstream.db .pytest_cache .ruff_cache .mypy_cache
