# One entry point for humans and CI. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint migrate-roundtrip bench faults clean

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
	cd examples/fastapi_app && ../../$(BIN)/pytest  # the example application's own suite

lint: install  ## ruff, formatting, mypy --strict and the import layering contract
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports

$(BIN)/.installed-bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $@

# every benchmark, even after one missed a target; fails at the end if any did
BENCHMARKS := read_path coherence throughput http batch watchers limit churn
BENCH_ARGS ?= --write
bench: $(BIN)/.installed-bench  ## every benchmark, written into docs/benchmarks.md (smoke run: BENCH_ARGS=--quick)
	@failed=""; for name in $(BENCHMARKS); do \
		echo "bench: $$name"; \
		$(BIN)/python benchmarks/bench_$$name.py $(BENCH_ARGS) || failed="$$failed $$name"; \
	done; \
	if [ -n "$$failed" ]; then echo "bench: failed:$$failed"; exit 1; fi

# every long fault scenario (marker faults_full): the harness's, 2,000 jobs each, whose figures
# go to FAULTS_REPORT and are printed as a table (docs/reliability.md), and the network
# namespaces' (docs/operations.md)
FAULTS_REPORT ?= .pytest_cache/faults
faults: install  ## the full fault suite: each fault, all at once, Postgres restarts, partitions
	rm -rf $(FAULTS_REPORT)
	FAULTS_REPORT=$(FAULTS_REPORT) $(BIN)/pytest -m faults_full tests/faults; \
		status=$$?; $(BIN)/python -m tests.faults.harness.figures $(FAULTS_REPORT); exit $$status

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
