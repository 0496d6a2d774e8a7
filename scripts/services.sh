#!/usr/bin/env bash
# Start the local RabbitMQ, PostgreSQL and Redis if they are not answering (Debian packages, as root).
# Services given by AMQP_URL / DATABASE_URL / REDIS_URL on another host are left alone.
set -uo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port name
  for _ in $(seq 1 60); do answers "$1" && return 0; sleep 1; done
  echo "$2 did not start on port $1" >&2
  return 1
}

if ! answers 5672; then
  echo "starting RabbitMQ" >&2
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for 5672 RabbitMQ || exit 1
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
if ! answers 5432; then
  echo "starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for 5432 PostgreSQL || exit 1
fi
if ! answers 6379; then
  echo "starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null || true
  wait_for 6379 Redis || exit 1
fi
exit 0
