# Two commands do all the set-up on a fresh machine:
#   make demo   - builds .venv (torch, attnzoo and its C++ extension) once, then runs `attnzoo demo`
#   make test   - the same set-up, then ruff and the test suite
# Pick another torch build with TORCH_SPEC, e.g. a CUDA one:
#   make test TORCH_SPEC="torch==2.11.0 --index-url https://download.pytorch.org/whl/cu130"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnzoo-installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: demo test bench lint clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet "setuptools>=64" wheel pybind11 ninja
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --quiet --no-build-isolation -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/attnzoo demo

# the benchmarks run once each here (--benchmark-disable), to prove they work; `make bench` times them
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests benchmarks --benchmark-disable

bench: $(STAMP)
	$(VENV)/bin/attnzoo bench
	$(PY) -m pytest benchmarks

clean:
	rm -rf $(VENV) build attnzoo/_C*.so attnzoo-out
