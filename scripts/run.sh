#!/usr/bin/env bash
# Run the whole system on this machine: monitor, LLM worker(s) and gateway against the local
# RabbitMQ and PostgreSQL. Without OPENAI_API_KEY the built-in fake model answers (LLM_PROVIDER=fake).
# Ctrl-C stops everything. Override any setting through the environment, e.g. WORKERS=2 GATEWAY_PORT=3001.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh

export JWT_SECRET="${JWT_SECRET:-dev-secret-change-me-in-production-0123456789}"
# a local trial: the gateway accepts the published development JWT_SECRET only in development
export ENVIRONMENT="${ENVIRONMENT:-development}"
# local trials only: the chat page signs in with tokens from POST /api/dev/token (off by default)
export DEV_TOKENS_ENABLED="${DEV_TOKENS_ENABLED:-true}"
WORKERS="${WORKERS:-1}"
pids=()
stop() { trap - INT TERM EXIT; kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop INT TERM EXIT

.venv/bin/chat-monitor & pids+=($!)
for i in $(seq 1 "$WORKERS"); do
  WORKER_METRICS_PORT=$(( ${WORKER_METRICS_PORT:-3200} + i - 1 )) .venv/bin/llm-worker & pids+=($!)
done
.venv/bin/chat-gateway & pids+=($!)

for _ in $(seq 1 60); do
  curl -fsS "http://127.0.0.1:${GATEWAY_PORT:-3000}/api/websocket/health" >/dev/null 2>&1 && break
  sleep 0.5
done
cat <<MSG

  chat page http://localhost:${GATEWAY_PORT:-3000}/chat/
  gateway   ws://localhost:${GATEWAY_PORT:-3000}/ws/chat   (health: http://localhost:${GATEWAY_PORT:-3000}/api/websocket/health)
  monitor   http://localhost:${MONITOR_PORT:-3100}/api/websocket/health
  a token   $(.venv/bin/chat-dev-token demo-user)
  try it    uv run python examples/client.py "What must a valid contract contain?"

MSG
wait -n "${pids[@]}"
