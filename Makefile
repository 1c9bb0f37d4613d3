# xdplb front door. `make demo` and `make test` set up everything they need.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: all deps venv build demo test test-unit test-bpf test-e2e bench fuzz lint clean image

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

# The differential test, long: random sequences (floods, port reuse, FIN/RST at every point,
# table pressure) until FUZZ_FRAMES frames went through program and model (0 disagreements).
FUZZ_FRAMES ?= 1000000
fuzz: build
	XDPLB_FUZZ_FRAMES=$(FUZZ_FRAMES) XDPLB_FUZZ_REPORT=bench/results/fuzz.json \
		$(PY) -m pytest -q -p no:cacheprovider -rA tests/bpf/test_differential.py \
		-k test_program_equals_model

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src/xdplb

clean:
	@$(MAKE) -s -C bpf clean
	rm -rf build src/xdplb/_data
