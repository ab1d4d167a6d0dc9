# Steady's developer commands. `make run` and `make test` work on a fresh clone: they create the
# virtualenv, install the package, fetch Kafka's jars and start a local broker as needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test unit verify fmt lint types chaos bench bench-quick jars clean

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

# The long chaos variant: 1,000 runs per scenario, workers killed every few seconds, the broker stopped and
# killed, workers added and removed. The short variant runs inside `make test`.
chaos: jars
	STEADY_CHAOS_RUNS=1000 STEADY_CHAOS_SECONDS=1800 $(BIN)/pytest tests/chaos -m chaos -s

# Benchmarks (see bench/README.md): `make bench` takes 30-40 minutes, `make bench-quick` a few.
bench: jars
	$(BIN)/pip install -q -r bench/requirements.txt
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: jars
	$(BIN)/pip install -q -r bench/requirements.txt
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .steady .pytest_cache .mypy_cache .ruff_cache
