#!/usr/bin/env bash
# Installs relayline into ./.venv and starts the demo (relay + worker + built-in model) on the
# embedded defaults
# (SQLite file ./relayline.db, in-process bus and limits) at http://127.0.0.1:8080; it prints
# the link that opens a working chat.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/relayline demo "$@"
