# One entry point for humans and CI. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint migrate-roundtrip bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install  ## start an embedded Postgres (unless JOBKEEPER_DATABASE_URL is set) and run the demo
	$(BIN)/python -m jobkeeper.demo

test: install  ## the whole test suite against a real Postgres (embedded unless configured)
	$(BIN)/pytest

lint: install  ## ruff, formatting, mypy --strict and the import layering contract
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports

bench: install  ## the benchmarks; results are written into docs/benchmarks.md
	$(BIN)/python benchmarks/bench_read_path.py --write

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
