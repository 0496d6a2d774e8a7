#!/usr/bin/env bash
# Run the whole test suite against real RabbitMQ, PostgreSQL and Redis (started here if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh
bash scripts/ensure-browser.sh
bash scripts/ensure-nginx.sh
exec uv run pytest "$@"
