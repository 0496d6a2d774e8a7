#!/usr/bin/env bash
# Install Debian's nginx (>= 1.19.5) and envsubst (gettext-base, which the nginx image's templating
# uses) for the deployment tests if they are missing. The tests run nginx as a plain process on free ports.
set -euo pipefail
if { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } && command -v envsubst >/dev/null 2>&1; then
  exit 0
fi
exec bash "$(dirname "$0")/apt-install.sh" nginx gettext-base
