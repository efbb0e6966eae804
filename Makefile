# Two commands do all the set-up on a fresh machine:
#   make demo   - builds .venv (torch, attnzoo and its C++ extension) once, then runs `attnzoo demo`
#   make test   - the same set-up, then ruff and the test suite
# (the set-up installs ".[dev]": the library, both tools extras - bench, viz - and the test tools)
#   make dist-check - the release check: sdist + wheel, installed into a fresh venv outside the checkout
# Pick another torch build with TORCH_SPEC, e.g. a CUDA one:
#   make test TORCH_SPEC="torch==2.11.0 --index-url https://download.pytorch.org/whl/cu130"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnzoo-installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: demo test bench dist-check lint clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet "setuptools>=64" wheel pybind11 ninja
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --quiet --no-build-isolation -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/attnzoo demo

# the benchmarks run once each here (--benchmark-disable), to prove they work; `make bench` times them
# ATTNZOO_EXPECT_EXTENSION: a run whose attnzoo lacks the compiled extension fails instead of skipping kernel tests
test: $(STAMP)
	$(VENV)/bin/ruff check .
	ATTNZOO_EXPECT_EXTENSION=$(if $(ATTNZOO_NO_EXTENSION),0,1) $(VENV)/bin/pytest tests benchmarks --benchmark-disable

# every CPU target, slow-marked sides (eager peers, N = 4096) included; a missed target fails
bench: $(STAMP)
	$(VENV)/bin/attnzoo bench
	$(PY) -m pytest benchmarks --ignore=benchmarks/test_targets_cpu.py --ignore=benchmarks/test_targets_decoding.py
	$(PY) -m pytest benchmarks/test_targets_cpu.py -m "slow or not slow" -s
	$(PY) -m pytest benchmarks/test_targets_decoding.py -s

# python -m build --no-isolation in a scratch copy, the wheel (built from the sdist) installed into a new
# venv under /tmp (no editable install), then `attnzoo list`, a fused call and a slice of the tests against it
dist-check:
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" bash scripts/check_dist.sh

clean:
	rm -rf $(VENV) build dist attnzoo.egg-info attnzoo/_C*.so attnzoo-out
