#!/usr/bin/env bash
# Installs everything the test suite needs, then runs lint, type checks and the import layers
# (Python and the web UI's JS), the web UI's unit tests and every Python test (unit, contract,
# end-to-end, browser, and the worker against a real llama.cpp server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/real_model.sh
bash scripts/services.sh
bash scripts/browser.sh
bash scripts/prometheus.sh
bash scripts/deploy_tools.sh
# Autobahn|Testsuite's Python 2.7 environment (~45 s the first time); without it
# tests/hub/test_autobahn.py skips and says why.
bash scripts/autobahn.sh >/dev/null || echo "scripts/autobahn.sh failed: the Autobahn tests will skip" >&2
.venv/bin/ruff check relayline tests bench
.venv/bin/ruff format --check relayline tests bench
.venv/bin/mypy
.venv/bin/lint-imports
web/node_modules/.bin/tsc -p web/tsconfig.json
web/node_modules/.bin/tsc -p clients/js/tsconfig.json
web/node_modules/.bin/eslint relayline/web/static/js relayline/web/static/sdk clients/js web/tests web/vendor_entry.js web/vendor_terminal_entry.js eslint.config.mjs
node --test web/tests/
.venv/bin/pytest "$@"
