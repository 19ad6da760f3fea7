# Everything runs from the repository's own virtualenv; every target installs first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := node_modules/.bin/buf
DIR ?=
ARGS ?=
N ?=

.PHONY: install proto docs run run-embed run-search run-web test test-fast bench bench-search bench-tls bench-web lint index query clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools warns of every editable install that maps a package dir: noise, not news.
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

proto: install
	$(PY) protos/generate.py

docs: install
	$(PY) docs/generate.py

run: install
	PY=$(PY) DIR="$(DIR)" scripts/run.sh

run-embed: install
	$(PY) -m embed_service

run-search: install
	$(PY) -m search_service

run-web: install
	@mkdir -p .imagesearch/pictures
	$(PY) -m imagesearch_client.web --root "$(or $(DIR),.imagesearch/pictures)"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m 'not slow'

bench: install
	$(PY) -m tests.benchmarks.embed $(ARGS)

bench-search: install
	$(PY) -m tests.benchmarks.search $(if $(N),--vectors $(N) --ingest) $(ARGS)

bench-tls: install
	$(PY) -m tests.benchmarks.security $(ARGS)

bench-web: install
	$(PY) -m tests.benchmarks.web $(ARGS)

# npm ci installs exactly the committed lock and never rewrites it.
$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	@touch $@

lint: install $(BUF)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m mypy docs/generate.py
	@mkdir -p build/buf-deps/google/rpc
	@cp "$$($(PY) -c 'import google.rpc.status_pb2 as s, pathlib; print(pathlib.Path(s.__file__).parent / "status.proto")')" build/buf-deps/google/rpc/status.proto
	$(BUF) lint

index: install
	$(VENV)/bin/imagesearch index "$(DIR)" --label-from-dir $(ARGS)

query: install
	$(VENV)/bin/imagesearch query $(ARGS)

clean:
	rm -rf build .mypy_cache .ruff_cache .pytest_cache
