# Two commands for a new user: `make demo` and `make test`. Both set everything up first
# (venv, pinned stack, C++ build) and skip each step that is already done.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
DEPS_STAMP := $(VENV)/.mlsim-deps
BUILD_STAMP := $(VENV)/.mlsim-build
NATIVE_SOURCES := CMakeLists.txt pyproject.toml $(wildcard cmake/*.cmake csrc/*.cpp csrc/*.hpp csrc/*.cu csrc/*.cuh)
# Quiet installs in CI keep the log readable; locally pip shows its progress.
PIP_QUIET := $(if $(CI),--progress-bar off -q,)
PYTEST_ARGS ?=

.PHONY: demo test install bench lint clean

demo: install
	$(PY) examples/demo.py

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m mlsim bench --benchmarks benchmarks

lint: install
	$(PY) -m ruff check mlsim tests benchmarks examples
	$(PY) -m ruff format --check mlsim tests benchmarks examples

install: $(BUILD_STAMP)

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "mlsim needs Python 3.11 ($(PYTHON) not found; set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements.txt | $(PY)
	$(PIP) install $(PIP_QUIET) --upgrade pip
	$(PIP) install $(PIP_QUIET) -r requirements.txt
	touch $@

# --no-build-isolation: an isolated build would download another torch to compile against.
$(BUILD_STAMP): $(DEPS_STAMP) $(NATIVE_SOURCES)
	$(PIP) install $(PIP_QUIET) --no-build-isolation --no-deps -e .
	@$(PY) -c "import torch, mlsim._core as c; print('mlsim: C++ core built:', c.build_info())"
	touch $@

clean:
	rm -rf build $(BUILD_STAMP)
