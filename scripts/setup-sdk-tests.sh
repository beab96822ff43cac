#!/usr/bin/env bash
# Installs the official provider SDKs that tests/sdk.rs drives: the Python ones into
# .venv/ (tests/sdk/requirements.txt under tests/sdk/constraints.txt), the Node ones into
# tests/sdk/node/node_modules/ (exactly tests/sdk/node/package-lock.json). Idempotent, and
# quick once done: a stamp named after the hash of the pins marks a finished install.
# Needs python3 (with venv) and, for the Node SDKs, node >= 20 with npm.
set -euo pipefail
cd "$(dirname "$0")/.."

# Several test processes (and several cargo test runs) may call this at once: a second
# `python3 -m venv` or pip/npm install racing the first one breaks both. One at a time.
exec 9>"${TMPDIR:-/tmp}/smsfence-sdk-setup.lock"
flock 9

py_pins=$(cat tests/sdk/requirements.txt tests/sdk/constraints.txt | sha1sum | cut -c1-12)
stamp_py=".venv/.smsfence-sdks-$py_pins"
if [ ! -f "$stamp_py" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check \
    -r tests/sdk/requirements.txt -c tests/sdk/constraints.txt
  rm -f .venv/.smsfence-sdks-*
  touch "$stamp_py"
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "setup-sdk-tests: npm not found; the Node SDK tests need node >= 20 and npm" >&2
  exit 0
fi
js_pins=$(cat tests/sdk/node/package.json tests/sdk/node/package-lock.json | sha1sum | cut -c1-12)
stamp_js="tests/sdk/node/node_modules/.smsfence-sdks-$js_pins"
if [ ! -f "$stamp_js" ]; then
  (cd tests/sdk/node && npm ci --silent --no-audit --no-fund >/dev/null)
  touch "$stamp_js"
fi
