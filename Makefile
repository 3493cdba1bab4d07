# One target each for install, test, bench, lint (STYLE.md). Everything runs in ./.venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
THREADS ?= 2

.PHONY: install build test test-fast bench bench-all lint info clean

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $@

# Builds swiftkern._C (+ CPU kernel libraries, + CUDA when nvcc and a CUDA torch exist) in place.
build: $(VENV)/.deps
	$(PIP) install -q --no-build-isolation --no-deps -e .

install: build

# tests/triton runs in its own process: its kernels must be imported with TRITON_INTERPRET=1 set,
# before anything else in the session imports them in compiled mode.
test: build
	$(PY) -m swiftkern.info
	$(PY) -m pytest -q -ra tests --ignore=tests/triton
	$(PY) -m pytest -q -ra tests/triton

test-fast: build
	$(PY) -m pytest -q -ra tests -m "not slow" --ignore=tests/triton

bench: build
	$(VENV)/bin/swiftkern bench --threads $(THREADS)

# The issue-4 table: HF XS/S/L1/L3 at batch 1 and 8, fp32 + bf16, every provider (slow: ~1 h).
bench-all: build
	mkdir -p bench_out
	$(VENV)/bin/swiftkern bench model --threads $(THREADS) --models hf:xs,hf:s,hf:l1,hf:l3 \
	  --batch 1,8 --dtypes fp32,bf16 --providers all --json bench_out/models.json

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check swiftkern triton_kernels tests benchmarks tools

info: build
	$(PY) -m swiftkern.info

clean:
	rm -rf build *.egg-info swiftkern/*.so
