#!/usr/bin/env bash
# Rolling update of the compose deployment: workers, then each gateway in turn, nginx following.
#
# nginx resolves the gateways' names (gateway-1, gateway-2) when it loads its configuration, and
# `up --no-deps` gives a recreated gateway a new address: without a reload nginx keeps sending to the
# old one and, once both are replaced, answers 502. So after each gateway is healthy again nginx
# reloads (graceful: open sockets stay on the old workers until they close), which works with any
# nginx, Debian's 1.22 as the image's. Between the recreate and the reload, nginx finds the old
# address refusing and tries the other gateway (proxy_next_upstream). tests/deploy/test_nginx.py
# replays this with a real nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
docker compose up -d --build --wait --no-deps llm-worker
for gateway in ${GATEWAYS:-gateway-1 gateway-2}; do
  docker compose up -d --build --wait --no-deps "$gateway"   # --wait: until its HEALTHCHECK passes
  docker compose exec -T nginx nginx -s reload
done
