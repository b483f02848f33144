# The two commands of the README: `make bench` and `make test`. Both create .venv/ if needed,
# install what they need and build the C++ extension.
#
# TORCH_SPEC picks the torch to install into a .venv that has none: by default torch==2.13.0 in
# its CPU build (from pip's configured sources when they hold one, e.g. a local wheel folder, else
# from the PyTorch CPU index). `make test TORCH_SPEC=torch` installs it as pip resolves it (on a
# Linux GPU box: PyPI's CUDA build, which brings its own triton). An existing torch in .venv is
# never replaced. TRITON_SPEC is installed only when torch brings no triton (the CPU build), so
# the Triton kernels run under the interpreter and compile for GPUs. 3.9.0 is the version the
# whole suite passes with on the CPU build; with 3.7.1 (the pin of torch 2.13.0's CUDA build) the
# interpreter tests pass but check-kernels finds 6 spill instructions in one fp32 sm_80 forward
# configuration (2026-12-02). A CUDA torch keeps the triton it pins.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.9.0
# the CPU build is preferred only for the default TORCH_SPEC, not for one given on the command line
PREFER_CPU := $(if $(filter file,$(origin TORCH_SPEC)),--prefer-cpu,)
STAMP := $(VENV)/.simclr-fast-installed

.PHONY: install test bench bench-full bench-pytest lint format wheel clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml setup.py tools/install_torch.py $(wildcard csrc/*.cpp csrc/*.h)
	$(PY) tools/install_torch.py $(PREFER_CPU) --triton "$(TRITON_SPEC)" "$(TORCH_SPEC)"
	# numpy before the build: setup.py imports torch, which warns when numpy is missing
	$(PY) -m pip install --quiet "setuptools>=77" wheel ninja numpy
	$(PY) -m pip install --quiet --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# check-kernels compiles every Triton kernel for sm_80/sm_90 without a GPU (and warms Triton's
# cache for tests/test_check_kernels.py).
test: $(STAMP)
	$(PY) -m simclr_fast check-kernels --arch sm_80 sm_90 --temperature 0.1 0.01
	$(PY) -m pytest tests

# fused vs naive NT-Xent on this machine: a table, bench-results/results.csv|jsonl, bench-results/loss.png
bench: $(STAMP)
	$(PY) -m simclr_fast bench $(ARGS)

bench-full: $(STAMP)
	$(PY) -m simclr_fast bench --full

bench-pytest: $(STAMP)
	$(PY) -m pytest benchmarks/ --benchmark-only

lint: $(STAMP)
	$(PY) -m ruff check simclr_fast tests benchmarks examples tools setup.py
	$(PY) -m ruff format --check simclr_fast tests benchmarks examples tools setup.py

format: $(STAMP)
	$(PY) -m ruff format simclr_fast tests benchmarks examples tools setup.py
	$(PY) -m ruff check --fix simclr_fast tests benchmarks examples tools setup.py

wheel: $(STAMP)
	$(PY) -m pip wheel --no-build-isolation --no-deps . -w dist/

clean:
	rm -rf build dist *.egg-info simclr_fast/_C*.so bench-results
