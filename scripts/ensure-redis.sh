#!/usr/bin/env bash
# Install Debian's redis-server for the tests if it is missing and no REDIS_URL points elsewhere
# (root, Debian/Ubuntu only). The tests check limits shared across gateways through Redis; running the
# system (scripts/run.sh) does not need it. A policy-rc.d for the time of the install keeps the package
# from starting its own service; scripts/services.sh starts it on 127.0.0.1 without persistence.
set -euo pipefail
case "${REDIS_URL:-redis://localhost}" in
  redis://localhost* | redis://127.0.0.1* | rediss://localhost* | rediss://127.0.0.1*) ;;
  *) exit 0 ;;
esac
if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then exit 0; fi
echo "installing redis-server (Debian package)" >&2
export DEBIAN_FRONTEND=noninteractive
cleanup_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && cleanup_policy=1
fi
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
if [ "$cleanup_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
