#!/usr/bin/env bash
# Install Debian's nginx for the deployment tests if it is missing (root, Debian/Ubuntu only).
# The tests run it as a plain process on free ports (never as the system service), so the
# package's own service is stopped and disabled right after installing it.
set -euo pipefail
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no nginx and no apt-get: install nginx (>= 1.19.5) so that 'nginx' is on PATH or at /usr/sbin/nginx" >&2
  exit 1
fi
echo "installing nginx (Debian package)" >&2
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the package from starting its service on port 80 during the install.
cleanup_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && cleanup_policy=1
fi
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends nginx >/dev/null
if [ "$cleanup_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
