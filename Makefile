# shoal: the two commands are `make demo` and `make test` (both run `make setup` first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup debs venv test unit lint demo bench clean-clusters

setup: debs venv

debs:
	@sh scripts/install-debs.sh

venv: $(BIN)/shoal

$(BIN)/shoal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# Every shell file shoal ships (package data under shoal/) or runs (scripts/), found by name or
# shebang so a new one cannot be left out.
SHELL_FILES = $(shell find shoal scripts -type f \( -name '*.sh' -o -exec sh -c \
	'head -n1 "$$1" | grep -qE "^\#!/bin/(ba|da)?sh"' _ {} \; \) -print | sort)

# The node side (what the agent bundle carries) must run on RHEL 8's Python 3.6.
NODE_MODULES = $(shell $(BIN)/python -c 'from shoal.bundle import MODULES; print(" ".join(MODULES))')
# ... and so must the layer1 image's supervisord event listener of the state service.
NODE_SCRIPTS = shoal/images/recipes/layer1/shoal-state-listener.py

lint: venv
	$(BIN)/ruff check
	$(BIN)/mypy
	$(BIN)/vermin --no-tips --violations -t=3.6- --feature union-types --eval-annotations \
		$(NODE_MODULES) $(NODE_SCRIPTS)
	shellcheck -x $(SHELL_FILES)

unit: venv
	$(BIN)/pytest -q tests/unit

test: setup lint
	$(BIN)/pytest -q tests

demo: setup
	$(BIN)/python -m shoal.demo

bench: setup
	$(BIN)/python bench/bench_cluster.py
	$(BIN)/python bench/bench_dist.py
	$(BIN)/python bench/bench_walks.py

clean-clusters: venv
	$(BIN)/python -m shoal.cluster.cleanup
