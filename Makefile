# xdplb front door. `make demo` and `make test` set up everything they need.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: all deps venv build demo test test-unit test-bpf test-e2e bench lint clean image

all: build

deps:
	@scripts/install-deps.sh

$(VENV)/.installed: pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench,metrics]'
	@touch $@

venv: deps $(VENV)/.installed

build: venv
	@$(MAKE) -s -C bpf

demo: build
	$(VENV)/bin/xdplb demo

test: build
	@scripts/install-deps.sh image
	$(PY) -m pytest -q tests

test-unit: build
	$(PY) -m pytest -q -m unit tests

test-bpf: build
	$(PY) -m pytest -q -m bpf tests

test-e2e: build
	$(PY) -m pytest -q -m e2e tests

bench: build
	@scripts/install-deps.sh bench
	$(PY) bench/run.py

# the OCI image xdplb:VERSION (Containerfile), from a base bootstrapped here (no registry)
image: build
	@scripts/install-deps.sh image
	@scripts/build-image.sh

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src/xdplb

clean:
	@$(MAKE) -s -C bpf clean
	rm -rf build src/xdplb/_data
