#!/usr/bin/env bash
# apt-install.sh PACKAGE...: install Debian packages for the tests (root, Debian/Ubuntu only), the one
# place the ensure-*.sh scripts install from. A policy-rc.d for the time of the install keeps a
# package from starting its own service (nginx on 80, Prometheus on 9090, redis-server on 6379):
# the tests and scripts/services.sh start what they need themselves.
set -euo pipefail
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing $* and no apt-get to install it: install it by other means" >&2
  exit 1
fi
echo "installing $* (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
cleanup_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && cleanup_policy=1
fi
trap 'if [ "$cleanup_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
