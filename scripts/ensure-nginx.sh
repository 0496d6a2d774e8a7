#!/usr/bin/env bash
# Install Debian's nginx (and envsubst, which the nginx image's templating uses) for the deployment
# tests if they are missing (root, Debian/Ubuntu only).
# The tests run nginx as a plain process on free ports; a policy-rc.d for the time of the install
# keeps the package from starting its own service on port 80.
set -euo pipefail
if { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } && command -v envsubst >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no nginx/envsubst and no apt-get: install nginx (>= 1.19.5) and gettext's envsubst" >&2
  exit 1
fi
echo "installing nginx and gettext-base (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
cleanup_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && cleanup_policy=1
fi
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends nginx gettext-base >/dev/null
if [ "$cleanup_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
