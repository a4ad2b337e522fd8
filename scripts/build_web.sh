#!/usr/bin/env bash
# Fetches the web UI's npm dependencies (exact versions from web/package-lock.json) and writes
# the vendor bundles (vendor.js, vendor.css; vendor_terminal.js, vendor_terminal.css) to
# relayline/web/static/vendor/, which is generated and never committed.
# Idempotent; needs Node 20+ and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=relayline/web/static/vendor
if ! command -v npm >/dev/null 2>&1; then
  echo "build_web: npm not found; install Node.js 20+ to build the web UI" >&2
  exit 1
fi
npm --prefix web ci --no-audit --no-fund --loglevel=error
mkdir -p "$OUT"
web/node_modules/.bin/esbuild web/vendor_entry.js \
  --bundle --format=esm --minify --target=es2020 \
  --legal-comments=eof --log-level=warning --banner:js="// @ts-nocheck generated bundle" \
  --outfile="$OUT/vendor.js"
# The stylesheets the bundled packages import (uPlot's) land beside it as vendor.css.
echo "build_web: wrote $OUT/vendor.js ($(wc -c <"$OUT/vendor.js") bytes) and vendor.css ($(wc -c <"$OUT/vendor.css") bytes)"
# The terminal view's (xterm.js), loaded only when a terminal is opened; with its stylesheet.
web/node_modules/.bin/esbuild web/vendor_terminal_entry.js \
  --bundle --format=esm --minify --target=es2020 \
  --legal-comments=eof --log-level=warning --banner:js="// @ts-nocheck generated bundle" \
  --outfile="$OUT/vendor_terminal.js"
echo "build_web: wrote $OUT/vendor_terminal.js ($(wc -c <"$OUT/vendor_terminal.js") bytes) and vendor_terminal.css ($(wc -c <"$OUT/vendor_terminal.css") bytes)"
