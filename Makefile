# Quick start: `make demo` (whole retraining chain on the bundled slides, CPU) and `make test`.
# Both install the pinned stack into .venv first (constraints.txt is the lock).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
PYTEST_ARGS ?=

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := 1

.PHONY: install browser engines test test-fast demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

# Headless Chromium for the MLflow UI test (Debian package; needs root, as on CI).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Real engines for the `slurm` and `postgres` tests (Debian packages; needs root, as on CI).
# Each script is idempotent and only installs; the test fixtures start and stop the daemons.
engines:
	bash deploy/slurm/install-debian.sh
	bash mlflow/install-postgres-debian.sh

# Everything CI runs: unit, integration (real servers on 127.0.0.1) and slow cases; GPU cases skip.
test: install browser engines
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Inner loop: skip the slow cases.
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m flows.demo

bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf work .pytest_cache
