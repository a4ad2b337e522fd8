#!/usr/bin/env bash
# Installs everything the test suite needs, then runs lint, type checks and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
.venv/bin/ruff check relayline tests bench
.venv/bin/ruff format --check relayline tests bench
.venv/bin/mypy
.venv/bin/pytest "$@"
