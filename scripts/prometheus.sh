#!/usr/bin/env bash
# Installs Debian's Prometheus (prometheus and promtool) for the alerting tests when it is
# missing and we may install it.
set -uo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing prometheus"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null \
    || echo "prometheus could not be installed; alerting tests will be skipped"
else
  echo "prometheus is missing and cannot be installed here; alerting tests will be skipped"
fi
exit 0
