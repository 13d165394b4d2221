#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real, only when they are missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
# Browser tests drive Debian's Chromium through Playwright (never a downloaded browser build).
[ -x /usr/bin/chromium ] || need+=(chromium)
# The deployment test installs the wheel into a fresh venv run by an unprivileged user, who cannot run a
# Python kept under /root (pyenv): Debian's Python 3.11 with its venv module.
/usr/bin/python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3.11-venv)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi
echo "installing ${need[*]} ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Packages must not start services here: the tests start their own throwaway instances.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq "${need[@]}" >/dev/null
