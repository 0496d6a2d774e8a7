#!/usr/bin/env bash
# Install Debian's prometheus package for its promtool if it is missing (root, Debian/Ubuntu only):
# the deployment tests run the alerting rules through `promtool test rules`. A policy-rc.d for the
# time of the install keeps the package from starting its own Prometheus on port 9090.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no promtool and no apt-get: install Prometheus's promtool (2.x or 3.x) on PATH" >&2
  exit 1
fi
echo "installing prometheus (Debian package, for promtool)" >&2
export DEBIAN_FRONTEND=noninteractive
cleanup_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && cleanup_policy=1
fi
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
if [ "$cleanup_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
