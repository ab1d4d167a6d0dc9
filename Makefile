# Steady's developer commands. `make run` and `make test` work on a fresh clone: they create the
# virtualenv, install the package, fetch Kafka's jars and start a local broker as needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test unit verify fmt lint types chaos jars clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(STAMP)

jars: $(STAMP)
	$(BIN)/steady broker fetch

run: jars
	$(BIN)/steady dev

test: jars
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

fmt: $(STAMP)
	$(BIN)/ruff format actors streams schemas tests bench
	$(BIN)/ruff check --fix actors streams schemas tests bench

lint: $(STAMP)
	$(BIN)/ruff format --check actors streams schemas tests bench
	$(BIN)/ruff check actors streams schemas tests bench

types: $(STAMP)
	$(BIN)/mypy

verify: lint types test

clean:
	rm -rf $(VENV) .steady .pytest_cache .mypy_cache .ruff_cache
