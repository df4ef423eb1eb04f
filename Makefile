# gpuloader: `make test` and `make bench` are the two front-door commands.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND ?= tensorflow

.PHONY: test test-keras-oldest bench bench-full lint gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tf,test,bench]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check gpuloader tests bench
	$(PY) -m pytest

# The oldest Keras pyproject.toml claims, beside the TensorFlow it needs, in a venv of its own: TF 2.21 asks for
# Keras >= 3.12 and 2.20 for >= 3.10, so Keras 3.7 comes with TF 2.18 (the oldest our `tf` extra allows, numpy < 2.1).
# Runs the tests of the Keras seam (the adapter, fit/evaluate/predict, callbacks, the epoch rule, super-batches);
# CI runs it after `make test` (about 2 minutes to install, 2 to test, on 2 cores).
KERAS_OLDEST ?= 3.7.0
TF_FOR_KERAS_OLDEST ?= 2.18.*
OLDEST_VENV := .venv-keras-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
KERAS_SEAM_TESTS := tests/test_keras_paths.py tests/test_fit.py tests/test_contract.py tests/test_superbatch.py \
	$(wildcard tests/test_keras_compat.py)

$(OLDEST_VENV)/.installed: pyproject.toml
	test -x $(OLDEST_PY) || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install --quiet --upgrade pip
	$(OLDEST_PY) -m pip install --quiet "keras==$(KERAS_OLDEST)" "tensorflow==$(TF_FOR_KERAS_OLDEST)" \
		"pytest>=8" "hypothesis>=6.100" "array-api-strict>=2.2"
	$(OLDEST_PY) -m pip install --quiet --no-deps -e .
	touch $@

test-keras-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_PY) -c "import keras, tensorflow as tf; print('Keras', keras.__version__, 'with TensorFlow', tf.__version__)"
	$(OLDEST_PY) -m pytest -q $(KERAS_SEAM_TESTS)

# make bench: the quick profile (2 rounds of the headline comparisons, augmentation rows included; progress and
# time left for every case; about 4 minutes on a quiet 2-core machine with the mask and ingest suites; 2.3 minutes of CPU time on a fresh
# clone before them, against 3.6 for the previous profile, which took a newcomer 5 minutes); make bench-full: the long version the README's figures come from (it adds the digits
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
	rm -rf $(VENV) $(OLDEST_VENV) build *.egg-info .pytest_cache bench/results
