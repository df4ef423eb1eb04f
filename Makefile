# gpuloader: `make test` and `make bench` are the two front-door commands.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND ?= tensorflow

.PHONY: test bench bench-full lint gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tf,test,bench]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check gpuloader tests bench
	$(PY) -m pytest

# make bench: the quick profile (2 rounds of the headline comparisons, augmentation rows included; progress and
# time left for every case; about 3 minutes on a quiet 2-core machine: 2.3 minutes of CPU time measured on a fresh
# clone, against 3.6 for the previous profile, which took a newcomer 5 minutes); make bench-full: the long version the README's figures come from (it adds the digits
# mode, the steps_per_execution=32 fit rows, both datasets in fit and the augmentation fit rows). How bench/ is
# built, and how to add a suite: bench/README.md. Extra arguments: make bench BENCH_ARGS="--suites host --modes epoch".
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/run.py --profile quick $(BENCH_ARGS)

bench-full: $(STAMP)
	$(PY) bench/run.py --profile full $(BENCH_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check gpuloader tests bench

# On the lent GPU machine (CuPy, torch, JAX; no TensorFlow, no registry):
# installs carried Keras wheels from .carry/wheels, runs the GPU tests and the
# device benchmark, and writes its report under $OUT (or bench/results).
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache bench/results
