# One entry point for every developer task. `make demo` and `make test` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAGE := build/function
CHECKOV_VENV := .venv-checkov

.PHONY: venv stage demo up down test unit property faults lint checkov docs bench load clean

$(VENV)/.installed: requirements-dev.txt requirements-lock.txt functions/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt -c requirements-lock.txt
	$(PY) infra/local/install_duckdb_spatial.py
	touch $@

venv: $(VENV)/.installed

# The deployable unit: exactly what Cloud Functions receives. The local stack runs from it.
# personas.yaml is validated here (an invalid one fails the build) and compiled for a start-up without
# PyYAML and marshmallow (infra/stage_config.py). The source ships compiled to bytecode (hash-checked .pyc):
# Google's buildpack compiles only the installed dependencies, so each new instance would compile ours.
stage: venv
	rm -rf $(STAGE) && mkdir -p $(STAGE)
	cp functions/main.py functions/requirements.txt $(STAGE)/
	cp -r functions/personas_warehouse $(STAGE)/personas_warehouse
	mkdir -p $(STAGE)/schemas && cp schemas/*.py schemas/tables.json $(STAGE)/schemas/
	cp personas.yaml $(STAGE)/personas.yaml
	PYTHONPATH=$(STAGE):. $(PY) -m infra.stage_config $(STAGE)/personas.yaml
	find $(STAGE) -name __pycache__ -prune -exec rm -rf {} +
	$(PY) -m compileall -q --invalidation-mode checked-hash $(STAGE)

demo: venv stage
	$(PY) -m infra.local.demo

up: venv stage
	$(PY) -m infra.local.stack up

down:
	$(PY) -m infra.local.stack down

test: venv stage
	$(PY) -m pytest -q

unit: venv
	$(PY) -m pytest -q tests/unit

# The property tests on the local stack with 8 random examples each (`make test` runs 3, besides their explicit
# cases; tests/integration/conftest.py, PROPERTY_EXAMPLES). About 20 minutes; run it before a release.
property: venv stage
	PERSONAS_PROPERTY_EXAMPLES=8 $(PY) -m pytest -q tests/integration -k property

# The fault tests (tests/faults, not in `make test`): each starts its own stack (ports 28050-28485), injects
# one fault mid-stream, then reconciles and compares users with a full rebuild. About 3 minutes.
faults: venv stage
	$(PY) -m pytest -q -s tests/faults

lint: venv checkov
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	@if command -v terraform >/dev/null; then terraform fmt -check -recursive infra/terraform; \
	else echo "no terraform on the PATH: terraform fmt skipped"; fi

# checkov gets its own venv: it pins packaging<24, which the project's .venv cannot hold.
$(CHECKOV_VENV)/.installed: infra/checkov/requirements.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --no-deps -r infra/checkov/requirements.txt
	touch $@

# Static security scan of infra/terraform, offline (--skip-download); any failed check fails.
# Justified exceptions are inline `#checkov:skip=ID:reason` comments on their resource.
checkov: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov --skip-download -d infra/terraform --framework terraform --quiet --compact

# Rewrite the generated sections of docs/tables.md (table layouts, naming examples).
docs: venv
	PYTHONPATH=functions:. $(PY) -m infra.docs

# Every benchmark against its baseline, side by side in one run; writes docs/performance.md (generated,
# whole file). Starts stacks of its own (ports 28050-28090, then 26050-26081). About 10 minutes;
# `make bench BENCH_FLAGS=--quick` for a quick check of the harness (its figures are not for publishing).
bench: venv stage
	PYTHONPATH=functions:. $(PY) -m tests.bench $(BENCH_FLAGS)

# 20,000 single-call messages through the Pub/Sub emulator's push on a stack of its own (ports 24050-24085),
# then infra.ops.reconcile; writes docs/load.md. A few minutes.
# The stacks of test, faults, bench and load move by PERSONAS_TEST_PORT_OFFSET (two checkouts at once).
load: venv stage
	$(PY) -m infra.local.load

clean:
	rm -rf build .stack $(VENV) $(CHECKOV_VENV)
