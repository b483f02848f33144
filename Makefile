# The two commands of the README: `make bench` and `make test`. Both create .venv/ if needed,
# install what they need and build the C++ extension.
#
# TORCH_SPEC picks the torch to install into a *new* .venv: the CPU build by default (a plain
# `torch` from PyPI is a multi-GB CUDA build). On a GPU box, create .venv with your CUDA torch
# first, or run `make test TORCH_SPEC=torch`; an existing torch in .venv is never replaced.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.simclr-fast-installed

.PHONY: install test bench bench-full bench-pytest lint format wheel clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet "setuptools>=69" wheel ninja
	$(PY) -m pip install --quiet --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# check-kernels compiles every Triton kernel for sm_80/sm_90 without a GPU (and warms Triton's
# cache for tests/test_check_kernels.py).
test: $(STAMP)
	$(PY) -m simclr_fast check-kernels --arch sm_80 sm_90
	$(PY) -m pytest tests

# fused vs naive NT-Xent on this machine: a table, bench-results/results.csv|jsonl, bench-results/loss.png
bench: $(STAMP)
	$(PY) -m simclr_fast bench $(ARGS)

bench-full: $(STAMP)
	$(PY) -m simclr_fast bench --full

bench-pytest: $(STAMP)
	$(PY) -m pytest benchmarks/ --benchmark-only

lint: $(STAMP)
	$(PY) -m ruff check simclr_fast tests benchmarks examples setup.py
	$(PY) -m ruff format --check simclr_fast tests benchmarks examples setup.py

format: $(STAMP)
	$(PY) -m ruff format simclr_fast tests benchmarks examples setup.py
	$(PY) -m ruff check --fix simclr_fast tests benchmarks examples setup.py

wheel: $(STAMP)
	$(PY) -m pip wheel --no-build-isolation --no-deps . -w dist/

clean:
	rm -rf build dist *.egg-info simclr_fast/_C*.so bench-results
