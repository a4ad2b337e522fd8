#!/usr/bin/env bash
# Installs everything the test suite needs, then runs lint, type checks, the web UI's unit
# tests and every Python test (unit, contract, end-to-end, browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
bash scripts/browser.sh
.venv/bin/ruff check relayline tests bench
.venv/bin/ruff format --check relayline tests bench
.venv/bin/mypy
.venv/bin/lint-imports
node --test web/tests/
.venv/bin/pytest "$@"
