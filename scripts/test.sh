#!/usr/bin/env bash
# Run the whole test suite against real RabbitMQ, PostgreSQL and Redis (started here if needed).
#
# Needs root and apt (Debian/Ubuntu): the services are started as root without systemd, and what
# the tests drive that is missing is installed from Debian's packages: Redis, Chromium (browser
# tests), Node.js (the JavaScript example), nginx, envsubst and promtool (deployment tests). RabbitMQ and
# PostgreSQL must already be installed (apt-get install rabbitmq-server postgresql), or be given by
# AMQP_URL / DATABASE_URL on another host. Arguments go to pytest, e.g. `bash scripts/test.sh tests/deploy -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
[ "$(id -u)" = 0 ] || missing+=("root (run it with sudo: it starts services and installs Debian packages)")
command -v apt-get >/dev/null 2>&1 || missing+=("apt-get (Debian/Ubuntu: it installs redis-server, chromium, nodejs, nginx, prometheus)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'scripts/test.sh needs %s\n' "${missing[@]}" >&2
  exit 1
fi
bash scripts/bootstrap.sh
export PATH="$PWD/.tools/bin:$PATH"  # the uv bootstrap chose: the image-build tests run it
bash scripts/ensure-redis.sh
export DATABASE_URL="${DATABASE_URL:-postgresql://chat:chat@localhost:5432/chat}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
bash scripts/services.sh
bash scripts/ensure-browser.sh
bash scripts/ensure-nginx.sh
bash scripts/ensure-promtool.sh
exec .venv/bin/python -m pytest "$@"
