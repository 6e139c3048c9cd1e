# One entry point for every developer task. `make demo` and `make test` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAGE := build/function

.PHONY: venv stage demo up down test unit lint docs bench clean

$(VENV)/.installed: requirements-dev.txt requirements-lock.txt functions/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt -c requirements-lock.txt
	$(PY) infra/local/install_duckdb_spatial.py
	touch $@

venv: $(VENV)/.installed

# The deployable unit: exactly what Cloud Functions receives. The local stack runs from it.
stage:
	rm -rf $(STAGE) && mkdir -p $(STAGE)
	cp functions/main.py functions/requirements.txt $(STAGE)/
	cp -r functions/personas_warehouse $(STAGE)/personas_warehouse
	mkdir -p $(STAGE)/schemas && cp schemas/*.py schemas/tables.json $(STAGE)/schemas/
	cp personas.yaml $(STAGE)/personas.yaml
	find $(STAGE) -name __pycache__ -prune -exec rm -rf {} +

demo: venv stage
	$(PY) -m infra.local.stack demo

up: venv stage
	$(PY) -m infra.local.stack up

down:
	$(PY) -m infra.local.stack down

test: venv stage
	$(PY) -m pytest -q

unit: venv
	$(PY) -m pytest -q tests/unit

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Rewrite README's generated sections (table layouts, naming examples).
docs: venv
	PYTHONPATH=functions:. $(PY) -m infra.docs

bench: venv stage
	PYTHONPATH=functions:. $(PY) -m tests.bench.bench_ingest

clean:
	rm -rf build .stack $(VENV)
