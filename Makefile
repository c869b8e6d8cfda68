# fairseq-efficiency: `make demo` and `make test` work on a fresh machine with Python 3.11.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fairseq-efficiency-installed
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`; each test's fairseq commands run one thread per worker
TEST_WORKERS ?= 2

.PHONY: setup demo demo-quick test test-slow bench clean

# The virtual environment is created in the clone and reused while setup.py is unchanged.
$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip wheel setuptools
	# torch first, as the CPU build: every later requirement then sees torch==2.13.0 satisfied
	$(BIN)/python -m pip install torch==2.13.0
	# fairseq is an sdist with Cython extensions; building it without build isolation uses
	# this torch/numpy instead of pulling a second (CUDA) torch into a build environment
	$(BIN)/python -m pip install cython "numpy>=1.21.3"
	$(BIN)/python -m pip install --no-build-isolation -e ".[test,plots]"
	@touch $(STAMP)

setup: $(STAMP)

# Every technique against the baseline at convergence, 2 seeds (benchmarks/specs/demo.toml):
# trains, translates and prints the report (demo/bench/report/: report.md, report.json, PNGs).
# Interrupted? Run it again: finished runs are skipped, the others resume.
demo: setup
	$(BIN)/python -m fairseq_efficiency.cli.bench benchmarks/specs/demo.toml --out demo/bench --jobs 2

# The 4-epoch smoke table: each feature trains, checkpoints and translates (about 9 minutes).
demo-quick: setup
	$(BIN)/fairseq-efficiency-demo --workdir demo

# The CI suite (slow end-to-end runs deselected; `make test-slow` runs them), one test file per
# worker at a time so that a file's shared fixtures are built once.
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf demo .pytest_cache
