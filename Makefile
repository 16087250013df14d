# Set-up and everyday commands. `make demo` and `make test` each install everything they need
# into .venv first (torch is installed on its own first: see README, "GPU machines").
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint compile bench tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

# kubectl renders the k8s/ manifests in the tests (Debian package kubernetes-client).
tools:
	@command -v kubectl >/dev/null || { apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null; }

demo: install
	$(BIN)/kubetune run

test: install tools
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench

compile: install
	$(BIN)/kubetune compile

clean:
	rm -rf $(VENV) runs .pytest_cache
