# Every target bootstraps its own virtual environment in .venv from PyPI.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv lint test test-fast bench demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,postgres]'
	touch $(STAMP)

## The official AsyncAPI parser (@asyncapi/parser, pinned in tools/asyncapi/package-lock.json),
## which a test runs on docs/asyncapi.json: installed in tools/asyncapi/node_modules (Node.js and
## npm needed), never globally, and without running packages' install scripts.
ASYNCAPI_STAMP := tools/asyncapi/node_modules/.installed

$(ASYNCAPI_STAMP): tools/asyncapi/package.json tools/asyncapi/package-lock.json
	npm ci --prefix tools/asyncapi --ignore-scripts --no-audit --no-fund
	touch $(ASYNCAPI_STAMP)

## make lint: style (ruff), types (mypy) and the import rules between layers (lint-imports);
## configured in pyproject.toml. make test runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## make test: lint, then the whole suite, against nats-server processes the tests start themselves,
## in TEST_WORKERS processes (pytest-xdist; 0: in this one). The tests mostly wait (fsyncs, servers,
## child processes), so 3 workers fit two cores. Each test module runs whole on one worker, in its
## order; tests/conftest.py hands out the longest modules (marked fault) first.
TEST_WORKERS ?= 3

test: $(STAMP) $(ASYNCAPI_STAMP)
	$(MAKE) lint
	$(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

## make bench: the benchmarks, each against its baseline in the same run (bench/README.md).
bench: $(STAMP)
	$(PY) -m bench.store
	$(PY) -m bench.ingest
	$(PY) -m bench.query
	$(PY) -m bench.replay

## make demo: a Hefei enrollment season end to end (embedded nats-server, ledger serve, 20,000
## synthetic residents); the report in the terminal and in data/demo/report.html.
demo: $(STAMP)
	$(PY) -m service.cli demo --report data/demo/report.html

clean:
	rm -rf $(VENV) .pytest_cache tools/asyncapi/node_modules
