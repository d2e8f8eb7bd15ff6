# Two commands: `make demo` (set up, then train and evaluate on synthetic data) and
# `make test` (set up, then the test suite). Set-up is idempotent: a stamp file records that the
# environment matches setup.cfg/constraints.txt, so a second run starts at once.
#   GPU=1 make ...   takes the CUDA builds (torch 2.13.0 and fbgemm-gpu 1.8.0 from PyPI) instead of
#                    the CPU stack; use it only on a machine with CUDA.
PYTHON ?= python3
VENV ?= .venv
GPU ?= 0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -qq -c constraints.txt
STAMP := $(VENV)/.installed-gpu$(GPU)
# Threads are set deliberately: torch's default oversubscribes when anything else runs (see
# ../shared/TORCHREC_CPU.md). The demo uses both cores in one process; tests run 2 workers x 1 thread.
DEMO_THREADS ?= 2
TEST_WORKERS ?= 2

.PHONY: setup demo test test-gpu lint clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt Makefile tools/fbgemm-gpu-cpu-shim/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(GPU),1)
	$(PIP) torch==2.13.0 fbgemm-gpu==1.8.0
else
	$(PIP) torch==2.13.0 ./tools/fbgemm-gpu-cpu-shim
endif
	$(PIP) -e '.[test]'
	$(PY) -m pip check
	rm -f $(VENV)/.installed-gpu*
	touch $@

demo: $(STAMP)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(VENV)/bin/rankers demo --out build/demo --overwrite

# Tests must hold on any CPU: float bits differ between machines (numpy's exp/log and torch's
# kernels take other SIMD paths with and without AVX2/AVX-512). The float-heavy tests run a second
# time with those paths switched off, so a test that pins float bits fails here, not on a user's
# machine. (x86-64 only: the feature names are x86's.)
SIMD_OFF := NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR" ATEN_CPU_CAPABILITY=default
PORTABLE_TESTS := tests/features tests/rankers/test_metrics.py tests/rankers/test_calibration.py \
	tests/rankers/test_bidding.py tests/rankers/test_bid_cli.py tests/rankers/test_backbones.py \
	tests/rankers/test_kernels.py

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) -q -m "not gpu" tests
ifeq ($(shell uname -m),x86_64)
	$(SIMD_OFF) OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) -q -p no:cacheprovider -m "not gpu" $(PORTABLE_TESTS)
endif

# The `gpu` tests (marker in setup.cfg; `make test` leaves them out): CUDA against CPU, with the
# TorchRec CUDA stack (`GPU=1 make test-gpu` on a machine with CUDA; skipped without a GPU). One
# process: the tests share the GPU. A machine with a CUDA torch but no venv or TorchRec (the lent
# H200s) runs tools/gpu_check.sh instead: these tests and the GPU benchmark, results in one folder.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu -p no:xdist tests

# Imports point one way (features <- rankers <- benchmarks) with no cycle: .importlinter and
# tools/import_cycles.py (which also sees a module importing its own package back).
lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache && PYTHONPATH=. $(PY) tools/import_cycles.py

clean:
	rm -rf build .pytest_cache .ruff_cache
