# Two commands on a fresh machine: `make demo` and `make test`. Everything else is here for them.
SHELL := /bin/bash
PY_VERSION ?= 3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast e2e lint typecheck lock manifests bench clean

$(UV):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv

$(STAMP): requirements.txt requirements-dev.txt | $(UV)
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

venv: $(STAMP)

## make demo: the embedded default, no cloud account: MLflow server + train + bento + serve + predictions
demo: $(STAMP)
	$(PY) -m tools.demo

## make test: every tier (unit, real MLflow/BentoML servers, Pulumi mocks, policy, lints, container e2e)
test: $(STAMP)
	$(PY) -m pytest

## make test-fast: everything but the container tier
test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e"

e2e: $(STAMP)
	$(PY) -m pytest -m e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy infra model

## make lock: recompile the pinned locks from the .in files
lock: | $(UV)
	$(UV) pip compile --quiet --python-version $(PY_VERSION) requirements.in -o requirements.txt
	$(UV) pip compile --quiet --python-version $(PY_VERSION) requirements-dev.in -o requirements-dev.txt
	$(UV) pip compile --quiet --python-version $(PY_VERSION) requirements-checkov.in -o requirements-checkov.txt

clean:
	rm -rf .demo .build manifests .pytest_cache .mypy_cache .ruff_cache
