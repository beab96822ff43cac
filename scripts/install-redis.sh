#!/usr/bin/env bash
# Installs Debian's redis-server and redis-tools when missing. Idempotent.
set -euo pipefail
# Tests run in parallel and may all call this at once: one installer at a time.
exec 9>/tmp/smsfence-apt.lock
flock 9
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
if command -v service >/dev/null 2>&1; then $SUDO service redis-server stop >/dev/null 2>&1 || true; fi
pkill -u redis -x redis-server >/dev/null 2>&1 || true
command -v redis-server >/dev/null
