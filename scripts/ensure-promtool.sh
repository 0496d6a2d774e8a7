#!/usr/bin/env bash
# Install Debian's prometheus package for its promtool (2.x or 3.x) if it is missing: the deployment
# tests run the alerting rules through `promtool test rules`.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then exit 0; fi
exec bash "$(dirname "$0")/apt-install.sh" prometheus
