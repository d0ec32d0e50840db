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

## make lint: style (ruff), types (mypy) and the import rules between layers (lint-imports);
## configured in pyproject.toml. make test runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## make test: lint, then the whole suite, against nats-server processes the tests start themselves.
test: $(STAMP)
	$(MAKE) lint
	$(PY) -m pytest -q

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
	rm -rf $(VENV) .pytest_cache
