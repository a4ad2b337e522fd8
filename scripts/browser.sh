#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests when it is missing and we may install it.
set -uo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || echo "chromium could not be installed; browser tests will be skipped"
else
  echo "chromium is missing and cannot be installed here; browser tests will be skipped"
fi
exit 0
