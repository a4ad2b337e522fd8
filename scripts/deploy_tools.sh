#!/usr/bin/env bash
# Tools the deployment tests use, from Debian's packages, when they are missing and we may
# install them: rsync (scripts/deploy.sh; tests/ops/test_deploy.py) and nginx, only to check the
# shipped site with `nginx -t` (tests/ops/test_deploy_files.py). nginx is unpacked into .tools/
# rather than installed, so that no web server is started or left listening on this machine.
set -uo pipefail
cd "$(dirname "$0")/.."
can_install=0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  can_install=1
fi
updated=0
update() {
  [ "$updated" = 1 ] || apt-get update -qq
  updated=1
}

if ! command -v rsync >/dev/null 2>&1; then
  if [ "$can_install" = 1 ]; then
    echo "installing rsync"
    { update && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rsync >/dev/null; } \
      || echo "rsync could not be installed; the deploy tests will be skipped"
  else
    echo "rsync is missing and cannot be installed here; the deploy tests will be skipped"
  fi
fi

NGINX=.tools/nginx/usr/sbin/nginx
if ! command -v nginx >/dev/null 2>&1 && [ ! -x "$NGINX" ]; then
  if command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
    echo "unpacking nginx into .tools/nginx"
    scratch=$(mktemp -d) && chmod 755 "$scratch"
    { { [ "$can_install" = 0 ] || update; } \
      && (cd "$scratch" && apt-get download -qq nginx >/dev/null) \
      && mkdir -p .tools/nginx && dpkg-deb -x "$scratch"/nginx_*.deb .tools/nginx; } \
      || echo "nginx could not be unpacked; the nginx -t test will be skipped"
    rm -rf "$scratch"
  else
    echo "nginx is missing and cannot be fetched here; the nginx -t test will be skipped"
  fi
fi
exit 0
