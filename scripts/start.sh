#!/usr/bin/env bash
# Installs relayline into ./.venv and starts it on the embedded defaults
# (SQLite file ./relayline.db, in-process bus and limits) at http://127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/relayline serve "$@"
