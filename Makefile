# The commands people type. Everything installs into .venv from the package registries.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast apache-kafka web-clients soak lint format bench bench-apply schemas clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install cxstream with its dev extra

run: $(STAMP) ## embedded broker + worker + simulated traffic on SQLite; Ctrl-C stops all
	$(BIN)/cxstream demo

test: $(STAMP) apache-kafka web-clients ## the whole suite: unit, property, integration (embedded broker and Apache Kafka, SQLite, PostgreSQL, Prometheus, Chromium)
	$(BIN)/python -m pytest -q

web-clients: ## Segment's libraries (npm, tests/web) and Debian's Chromium for the browser and Node client tests
	@# Only what is missing: Debian's npm cannot be installed beside a Node.js from elsewhere (NodeSource's ships npm).
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	test -d tests/web/node_modules/@segment/analytics-next || (cd tests/web && npm ci --no-audit --no-fund)

apache-kafka: $(STAMP) ## fetch Apache Kafka with Maven for the tests that run on it (kept in var/apache-kafka)
	@command -v java >/dev/null && command -v mvn >/dev/null || { apt-get update -qq && apt-get install -y -qq default-jdk-headless maven; }
	$(BIN)/python -m tests.support.apache_kafka fetch

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

bench-apply: $(STAMP) ## the apply path alone, in-process: CPU per event (python -m bench.apply --help)
	$(BIN)/python -m bench.apply

schemas: $(STAMP) ## regenerate the published JSON Schemas of every topic record
	$(BIN)/cxstream schemas --out schemas/json

clean:
	rm -rf $(VENV) var cxstream.db .pytest_cache .ruff_cache .mypy_cache
