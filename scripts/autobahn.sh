#!/usr/bin/env bash
# Builds the Python 2.7 environment the Autobahn|Testsuite fuzzing client needs
# (`autobahntestsuite` is Python 2 code) into .autobahn-venv/, and prints the command that runs
# `wstest`. Idempotent: a complete environment with the same pins is reused as it is.
#
# Python 2.7 comes from pyenv (2.7.18), or from $RELAYLINE_PYTHON27. The pins are those of the
# suite's own requirements (Twisted 19.10.0, autobahn 0.10.9) plus the last releases of its
# dependencies that still run on Python 2.7. tests/hub/test_autobahn.py runs the suite
# against the relay; it skips (saying why) when this script fails.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=.autobahn-venv
pins=(
    "autobahntestsuite==0.8.2"
    "autobahn[twisted,accelerate]==0.10.9"
    "Twisted==19.10.0"
    "txaio==2.1.0"
    "six==1.16.0"
    "zope.interface==5.5.2"
    "jinja2==2.11.3"
    "markupsafe==1.1.1"
    "Werkzeug==1.0.1"
    "klein==20.6.0"
    "pyopenssl==19.1.0"
    "cryptography==3.3.2"
    "service-identity==21.1.0"
    "unittest2==1.1.0"
    "wsaccel==0.6.3"
    "ujson==2.0.3"
)
stamp="$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-16)"

if [[ -f "$dest/ok" && "$(cat "$dest/ok")" == "$stamp" ]]; then
    echo "$dest/bin/wstest"
    exit 0
fi

python27="${RELAYLINE_PYTHON27:-}"
if [[ -z "$python27" ]]; then
    for candidate in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/2.7.18/bin/python" \
        "$(command -v python2.7 || true)"; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            python27="$candidate"
            break
        fi
    done
fi
if [[ -z "$python27" ]]; then
    echo "autobahn.sh: no Python 2.7 found (install pyenv's 2.7.18 or set RELAYLINE_PYTHON27)" >&2
    exit 1
fi

rm -rf "$dest"
mkdir -p "$dest/bin"
# Installed with --target (Python 2.7 has no venv module), so nothing lands in the
# interpreter's own site-packages; the launcher below adds the target as a site directory (so
# its .pth files, zope's namespace among them, are read). The machine's pip configuration is
# left out: its local indexes and constraints are for the Python 3 environment.
PIP_CONFIG_FILE=/dev/null "$python27" -m pip install --quiet --no-warn-script-location \
    --disable-pip-version-check --target "$dest/lib" "${pins[@]}" >&2
cat >"$dest/bin/wstest" <<EOF
#!/usr/bin/env bash
lib="\$(cd "\$(dirname "\$0")/../lib" && pwd)"
PYTHONWARNINGS=ignore exec "$python27" -c 'import site, sys; site.addsitedir(sys.argv.pop(1)); sys.argv[0] = "wstest"; from autobahntestsuite.wstest import run; run()' "\$lib" "\$@"
EOF
chmod +x "$dest/bin/wstest"
"$dest/bin/wstest" --help >/dev/null
echo "$stamp" >"$dest/ok"
echo "$dest/bin/wstest"
