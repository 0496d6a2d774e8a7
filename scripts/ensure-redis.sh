#!/usr/bin/env bash
# Install Debian's redis-server for the tests if it is missing and no REDIS_URL points elsewhere.
# The tests check limits shared across gateways through Redis; running the system (scripts/run.sh)
# does not need it. scripts/services.sh starts it on 127.0.0.1 without persistence.
set -euo pipefail
case "${REDIS_URL:-redis://localhost}" in
  redis://localhost* | redis://127.0.0.1* | rediss://localhost* | rediss://127.0.0.1*) ;;
  *) exit 0 ;;
esac
if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then exit 0; fi
exec bash "$(dirname "$0")/apt-install.sh" redis-server
