#!/usr/bin/env bash
# Run the whole system on this machine: monitor, LLM worker(s) and gateway against the local
# RabbitMQ and PostgreSQL (and Redis when it is installed). Without OPENAI_API_KEY the built-in fake
# model answers (LLM_PROVIDER=fake). Ctrl-C stops everything. Override any setting through the
# environment, e.g. WORKERS=2 GATEWAY_PORT=3001.
#
# Local trials only: everything listens on 127.0.0.1 (HOST), and the chat page signs in with tokens
# from POST /api/dev/token signed with a published development secret. Listening anywhere else with
# that secret and dev tokens on would hand out accounts to anyone who reaches the port: refused.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

DEV_SECRET=dev-secret-change-me-in-production-0123456789
export HOST="${HOST:-127.0.0.1}"
export JWT_SECRET="${JWT_SECRET:-$DEV_SECRET}"
export DEV_TOKENS_ENABLED="${DEV_TOKENS_ENABLED:-true}"
# a local trial: the gateway accepts the published development JWT_SECRET only in development
export ENVIRONMENT="${ENVIRONMENT:-development}"
export DATABASE_URL="${DATABASE_URL:-postgresql://chat:chat@localhost:5432/chat}"
case "$HOST" in
  127.* | localhost | ::1) ;;
  *)
    if [ "$JWT_SECRET" = "$DEV_SECRET" ] && [[ "${DEV_TOKENS_ENABLED,,}" =~ ^(true|1|yes|on)$ ]]; then
      echo "run.sh: HOST=$HOST with dev tokens and the published JWT_SECRET would let anyone who reaches" >&2
      echo "        the port sign in as any user: set JWT_SECRET (32+ bytes) and DEV_TOKENS_ENABLED=false" >&2
      exit 2
    fi
    ;;
esac
# Redis is optional: used when REDIS_URL is given, or when redis-server is installed here.
if [ -z "${REDIS_URL:-}" ] && { command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; }; then
  export REDIS_URL=redis://127.0.0.1:6379/0
fi
bash scripts/services.sh

WORKERS="${WORKERS:-1}"
pids=()
stop() { trap - INT TERM EXIT; kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop INT TERM EXIT

.venv/bin/chat-monitor & pids+=($!)
for i in $(seq 1 "$WORKERS"); do
  WORKER_METRICS_PORT=$(( ${WORKER_METRICS_PORT:-3200} + i - 1 )) .venv/bin/llm-worker & pids+=($!)
done
.venv/bin/chat-gateway & pids+=($!)

health="http://127.0.0.1:${GATEWAY_PORT:-3000}/api/websocket/health"
.venv/bin/python - "$health" <<'PY' || echo "run.sh: the gateway did not answer on $health yet" >&2
import sys, time, urllib.request
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
PY
cat <<MSG

  chat page http://localhost:${GATEWAY_PORT:-3000}/chat/
  gateway   ws://localhost:${GATEWAY_PORT:-3000}/ws/chat   (health: $health)
  monitor   http://localhost:${MONITOR_PORT:-3100}/api/websocket/health
  redis     ${REDIS_URL:-none (limits per process; install redis-server or set REDIS_URL to share them)}
  a token   $(.venv/bin/chat-dev-token demo-user)
  try it    .venv/bin/python examples/client.py "What must a valid contract contain?"

MSG
wait -n "${pids[@]}"
