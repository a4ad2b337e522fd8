#!/usr/bin/env bash
# Deploys this source tree to HOST over ssh: copies the application (and nothing else) into one
# fixed folder there, installs it into the host's virtualenv, migrates the database, restarts
# the systemd units and runs `relayline smoke` against the relay. Stops at the first step that
# fails, naming it, with a non-zero exit.
#
#   scripts/deploy.sh [user@]HOST
#
# Settings (environment):
#   RELAYLINE_DEPLOY_DIR        the application folder on the host (default /opt/relayline/app).
#                               rsync --delete works inside it and nowhere else; keep nothing
#                               of your own there.
#   RELAYLINE_DEPLOY_VENV       the virtualenv (default: .venv beside the application folder,
#                               /opt/relayline/.venv, where the shipped units run relayline from;
#                               it may not lie inside the application folder)
#   RELAYLINE_DEPLOY_ENV_FILE   the relay's settings on the host, read for `relayline migrate`
#                               (default /etc/relayline/relay.env, the units' EnvironmentFile)
#   RELAYLINE_DEPLOY_RUN_AS     the user `relayline migrate` runs as, so that a SQLite file it
#                               creates belongs to the service (default relayline, the units'
#                               User=, through sudo unless ssh logs in as that user; empty: the
#                               ssh user)
#   RELAYLINE_DEPLOY_UNITS      the units to restart (default "relayline-relay relayline-worker")
#   RELAYLINE_DEPLOY_SYSTEMCTL  how to call systemctl on the host (default systemctl; e.g.
#                               "sudo systemctl" when ssh does not log in as root)
#   RELAYLINE_DEPLOY_INSTALL    a command run on the host in the application folder instead of the
#                               default install (a venv if missing, then pip install '.[server]'
#                               with the versions in constraints.txt);
#                               it sees RELAYLINE_DEPLOY_DIR and RELAYLINE_DEPLOY_VENV
#   RELAYLINE_DEPLOY_SSH        the ssh command, also rsync's remote shell (default ssh; e.g.
#                               "ssh -p 2222 -i ~/.ssh/deploy")
#   RELAYLINE_DEPLOY_SMOKE_URL  the relay as seen from the host (default http://127.0.0.1:8080)
#   RELAYLINE_DEPLOY_SMOKE_TOKEN  the token for the smoke test (required: the admin key, or a
#                               tenant key with RELAYLINE_DEPLOY_SMOKE_TOPIC); sent to the host on
#                               ssh's standard input, never on a command line of this machine
#   RELAYLINE_DEPLOY_SMOKE_TOPIC  the topic the smoke test subscribes to (default admin)
#   RELAYLINE_DEPLOY_SMOKE_WAIT_S how long the smoke test is retried while the relay starts
#                               (default 30)
set -euo pipefail

STEP=arguments
trap 'rc=$?; if [ "$rc" -ne 0 ]; then echo "deploy: step '\''$STEP'\'' failed (exit $rc)" >&2; fi' EXIT

if [ $# -ne 1 ] || [ -z "$1" ] || [ "${1#-}" != "$1" ]; then
  echo "usage: scripts/deploy.sh [user@]HOST" >&2
  exit 2
fi
HOST=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
APP_DIR=${RELAYLINE_DEPLOY_DIR:-/opt/relayline/app}
APP_DIR=${APP_DIR%/}
VENV=${RELAYLINE_DEPLOY_VENV:-$(dirname "$APP_DIR")/.venv}
VENV=${VENV%/}
ENV_FILE=${RELAYLINE_DEPLOY_ENV_FILE:-/etc/relayline/relay.env}
RUN_AS=${RELAYLINE_DEPLOY_RUN_AS-relayline}
UNITS=${RELAYLINE_DEPLOY_UNITS:-relayline-relay relayline-worker}
SYSTEMCTL=${RELAYLINE_DEPLOY_SYSTEMCTL:-systemctl}
SSH=${RELAYLINE_DEPLOY_SSH:-ssh}
SMOKE_URL=${RELAYLINE_DEPLOY_SMOKE_URL:-http://127.0.0.1:8080}
SMOKE_TOPIC=${RELAYLINE_DEPLOY_SMOKE_TOPIC:-admin}
SMOKE_WAIT_S=${RELAYLINE_DEPLOY_SMOKE_WAIT_S:-30}
read -r -a SSH_CMD <<<"$SSH"

step() {
  STEP=$1
  echo "==> $1: $2"
}

# Runs a shell command on the host; its standard input is this script's.
on_host() {
  "${SSH_CMD[@]}" "$HOST" "$1"
}

# The command on the host that runs "$@" as RUN_AS with the relay's settings loaded, as the
# units do (EnvironmentFile= takes the same KEY=value lines).
as_service() {
  local inner
  inner=$(printf 'set -a && . %q && set +a && exec' "$ENV_FILE")
  inner+=$(printf ' %q' "$@")
  if [ -n "$RUN_AS" ]; then
    printf 'if [ "$(id -un)" = %q ]; then sh -c %q; else sudo -u %q -- sh -c %q; fi' \
      "$RUN_AS" "$inner" "$RUN_AS" "$inner"
  else
    printf 'sh -c %q' "$inner"
  fi
}

step check "the settings and the local tree"
case $APP_DIR in
  /*) ;;
  *) echo "RELAYLINE_DEPLOY_DIR must be an absolute path, not '$APP_DIR'" >&2; exit 1 ;;
esac
case $APP_DIR/ in
  */../* | */./* | *//*)
    echo "RELAYLINE_DEPLOY_DIR must be a plain path (no '.', '..' or '//'): '$APP_DIR'" >&2
    exit 1 ;;
esac
# --delete empties whatever the folder holds that is not the application: never let that be a
# folder as wide as / or /opt.
if [ "$(echo "$APP_DIR" | tr -cd / | wc -c)" -lt 2 ]; then
  echo "RELAYLINE_DEPLOY_DIR is too close to / for a folder rsync --delete owns: '$APP_DIR'" >&2
  exit 1
fi
case $VENV/ in
  "$APP_DIR"/*)
    echo "RELAYLINE_DEPLOY_VENV ('$VENV') may not lie inside RELAYLINE_DEPLOY_DIR: the sync would delete it" >&2
    exit 1 ;;
esac
if [ -z "${RELAYLINE_DEPLOY_SMOKE_TOKEN:-}" ]; then
  echo "RELAYLINE_DEPLOY_SMOKE_TOKEN is not set (the admin key, or a tenant key with RELAYLINE_DEPLOY_SMOKE_TOPIC)" >&2
  exit 1
fi
case $SMOKE_WAIT_S in
  '' | *[!0-9]*) echo "RELAYLINE_DEPLOY_SMOKE_WAIT_S must be a whole number of seconds" >&2; exit 1 ;;
esac
for needed in pyproject.toml constraints.txt README.md relayline/__init__.py relayline/web/static/vendor/vendor.js; do
  if [ ! -s "$ROOT/$needed" ]; then
    echo "$ROOT/$needed is missing (the web UI's bundle is built by scripts/build_web.sh)" >&2
    exit 1
  fi
done
command -v rsync >/dev/null || { echo "rsync is not installed here" >&2; exit 1; }

step connect "$HOST"
on_host "command -v rsync >/dev/null || { echo 'rsync is not installed on the host' >&2; exit 1; }; mkdir -p $(printf %q "$APP_DIR")" </dev/null

step sync "$ROOT -> $HOST:$APP_DIR"
# Only the application: the package (with the built web bundle), what builds and installs it,
# the scripts and the deployment files. Everything else in the folder on the host, stale files
# and build leftovers included, is deleted (--delete-excluded), and only there.
rsync -rlpt --checksum --delete --delete-excluded -e "$SSH" \
  --exclude='__pycache__/' --exclude='*.pyc' --exclude='*.egg-info/' --exclude='.*' \
  --include='/pyproject.toml' --include='/constraints.txt' --include='/README.md' --include='/LICENSE' \
  --include='/relayline/***' --include='/scripts/***' --include='/deploy/***' \
  --include='/web/' --include='/web/package.json' --include='/web/package-lock.json' \
  --include='/web/vendor_entry.js' --include='/web/vendor_terminal_entry.js' \
  --exclude='*' \
  "$ROOT/" "$HOST:$APP_DIR/" </dev/null

step install "into $VENV"
if [ -n "${RELAYLINE_DEPLOY_INSTALL:-}" ]; then
  install_cmd=$RELAYLINE_DEPLOY_INSTALL
else
  install_cmd='{ [ -x "$RELAYLINE_DEPLOY_VENV/bin/python" ] || python3 -m venv "$RELAYLINE_DEPLOY_VENV"; } && "$RELAYLINE_DEPLOY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$RELAYLINE_DEPLOY_DIR/constraints.txt" "$RELAYLINE_DEPLOY_DIR[server]"'
fi
on_host "$(printf 'cd %q && RELAYLINE_DEPLOY_DIR=%q RELAYLINE_DEPLOY_VENV=%q bash -c %q' \
  "$APP_DIR" "$APP_DIR" "$VENV" "set -euo pipefail; $install_cmd")" </dev/null

step migrate "relayline migrate with $ENV_FILE"
on_host "test -r $(printf %q "$ENV_FILE") || { echo '$ENV_FILE is missing or unreadable' >&2; exit 1; }; $(as_service "$VENV/bin/relayline" migrate)" </dev/null

step restart "$SYSTEMCTL restart $UNITS"
on_host "$SYSTEMCTL restart $UNITS" </dev/null

step smoke "relayline smoke --url $SMOKE_URL --topic $SMOKE_TOPIC"
# The token travels on ssh's standard input; the relay may still be starting, so the smoke test
# is tried again until it passes or RELAYLINE_DEPLOY_SMOKE_WAIT_S have passed.
smoke_script=$(printf 'IFS= read -r token; deadline=$(( $(date +%%s) + %q )); while :; do out=$(%s --url %q --token "$token" --topic %q 2>&1) && { echo "$out"; exit 0; }; [ "$(date +%%s)" -lt "$deadline" ] || { echo "$out" >&2; exit 1; }; sleep 1; done' \
  "$SMOKE_WAIT_S" "$(printf %q "$VENV/bin/relayline") smoke" "$SMOKE_URL" "$SMOKE_TOPIC")
printf '%s\n' "$RELAYLINE_DEPLOY_SMOKE_TOKEN" | on_host "$smoke_script"

STEP=done
echo "deployed to $HOST:$APP_DIR"
