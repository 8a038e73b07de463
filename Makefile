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

lint: venv
	$(BIN)/ruff check shoal tests bench
	$(BIN)/mypy

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
