# Two entry points for a fresh machine: `make train` and `make test`.
# torch is installed first so pip takes the local CPU build instead of a multi-GB CUDA wheel;
# on a GPU host, set TORCH_SPEC (e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124") and FAISS=gpu.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# faiss-cpu here; FAISS=gpu installs faiss-gpu on a GPU host.
FAISS ?= cpu
# Extra pytest flags (.ci/run adds --durations); test processes (pytest-xdist workers): one per core, at most 4.
PYTEST_ARGS ?=
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hbt-installed

.PHONY: setup train lint test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev,$(FAISS)]'
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) train.py

# ruff's lint and format check first (seconds), then the whole suite.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) outputs multirun
