#!/usr/bin/env bash
# Creates ./.venv, installs relayline with its development tools, and builds the web UI's
# vendor bundle (npm packages; Node.js 20+). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
VENDOR=relayline/web/static/vendor/vendor.js
TERMINAL=relayline/web/static/vendor/vendor_terminal.js
if [ ! -s "$VENDOR" ] || [ web/package-lock.json -nt "$VENDOR" ] || [ web/vendor_entry.js -nt "$VENDOR" ] \
  || [ ! -s "$TERMINAL" ] || [ web/vendor_terminal_entry.js -nt "$TERMINAL" ] \
  || [ scripts/build_web.sh -nt "$VENDOR" ] || [ ! -x web/node_modules/.bin/tsc ]; then
  bash scripts/build_web.sh
fi
