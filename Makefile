# Everything installs into .venv from pyproject.toml, pinned by constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench bench-quick clean lock

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bulkclaim demo

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

# Benchmarks (see benchmarks/RESULTS.md). bench: every scenario at Connect's real default (2/s, burst 5)
# and at 20/s, 3 repetitions each, and 20 take-over trials, ~50 minutes; bench-quick: 20/s only, smaller N,
# one run each, 3 take-over trials, ~6 minutes.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.sandbox_throughput
	$(BIN)/python -m benchmarks.compare
	$(BIN)/python -m benchmarks.migrations
	$(BIN)/python -m benchmarks.scale
	$(BIN)/python -m benchmarks.workers
	$(BIN)/python -m benchmarks.workers --rate 2 --numbers 150
	$(BIN)/python -m benchmarks.workers --rate 2 --numbers 150 --neighbour 10
	$(BIN)/python -m benchmarks.takeover --trials 20
	$(BIN)/python -m benchmarks.flows

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.sandbox_throughput --quick
	$(BIN)/python -m benchmarks.compare --quick --reps 1
	$(BIN)/python -m benchmarks.migrations --quick --reps 1
	$(BIN)/python -m benchmarks.scale --rows 100000
	$(BIN)/python -m benchmarks.workers --numbers 400 --times 1
	$(BIN)/python -m benchmarks.takeover --trials 3

# Re-pin after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^bulkclaim' > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
