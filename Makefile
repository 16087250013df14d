# Set-up and everyday commands. `make demo` and `make test` each install everything they need
# into .venv first (torch is installed on its own first: see README, "GPU machines").
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
# The images' lock doubles as the constraints of every dev/CI install, so tests run against the
# versions that ship (and a newer release on the index can't change a CI run).
LOCK := docker/requirements-common.txt

.PHONY: install demo test lint compile bench tools checkov check-image-requirements clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --constraint $(LOCK) -e '.[dev]'
	touch $@

install: $(STAMP)

# kubectl renders the k8s/ manifests in the tests (Debian package kubernetes-client).
tools:
	@command -v kubectl >/dev/null || { apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null; }

# checkov scans k8s/ and docker/ in the tests. Its own venv: its pins (boto3, botocore, packaging)
# would downgrade ours.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

checkov: $(CHECKOV_VENV)/.installed

# The images' pinned requirements exist for their Python and platform (pip --dry-run, no wheel downloaded).
check-image-requirements: install
	$(BIN)/python docker/check_requirements.py

demo: install
	$(BIN)/kubetune run

test: install tools checkov
	$(BIN)/python -m pytest -q
	$(BIN)/python docker/check_requirements.py

lint: install
	$(BIN)/ruff check src tests bench

compile: install
	$(BIN)/kubetune compile

# The CPU benchmark set (throughput, tokenization and the demo run: 30 minutes on 2 cores; the quality section:
# hours, see bench/run.sh); appends to bench/results/, rewrites BENCHMARKS.md.
bench: install
	PYTHON=$(BIN)/python bench/run.sh

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) runs .pytest_cache
