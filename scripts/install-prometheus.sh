#!/usr/bin/env bash
# Installs Debian's prometheus package (prometheus + promtool) when missing. Idempotent.
set -euo pipefail
# Tests run in parallel and may all call this at once: one installer at a time.
exec 9>/tmp/smsfence-apt.lock
flock 9
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
# --no-install-recommends: no node exporter, no service started as a side effect.
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends prometheus >/dev/null
# The package may start a system Prometheus on :9090; the tests run their own.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop prometheus >/dev/null 2>&1 || true; fi
if command -v service >/dev/null 2>&1; then $SUDO service prometheus stop >/dev/null 2>&1 || true; fi
pkill -u prometheus -x prometheus >/dev/null 2>&1 || true
command -v promtool >/dev/null
