#!/usr/bin/env bash
# Start the local services that AMQP_URL, DATABASE_URL and REDIS_URL point at, if they are not answering.
#
# Only what a URL points at on this machine (localhost, 127.0.0.1, ::1 or a Unix socket) is touched:
# a service on another host is left alone, and without REDIS_URL no Redis is started (it is optional:
# without it the gateway keeps its limits per process). The services are Debian's packages, started as
# root without systemd (pg_ctlcluster, rabbitmq-server -detached, redis-server --daemonize).
# For a local DATABASE_URL whose role is not "postgres" (the default chat:chat@localhost/chat), the
# role and its database are created if missing, as the postgres OS user over its Unix socket (peer
# authentication, Debian's default pg_hba.conf); the services then log in over TCP with the password.
set -uo pipefail

AMQP_URL="${AMQP_URL:-amqp://guest:guest@localhost:5672/}"
DATABASE_URL="${DATABASE_URL:-postgresql://chat:chat@localhost:5432/chat}"
REDIS_URL="${REDIS_URL:-}"

# "host port user password database" of a URL; host "-" means a Unix socket folder follows in $6.
parse() {
  python3 - "$1" "$2" <<'PY'
import sys
from urllib.parse import parse_qs, unquote, urlsplit
url, default_port = sys.argv[1], sys.argv[2]
parts = urlsplit(url)
socket_dir = parse_qs(parts.query).get("host", [""])[0]
host = "-" if socket_dir.startswith("/") or (not parts.hostname and parts.scheme.startswith("postgres")) else parts.hostname
print(host or "-", parts.port or default_port, unquote(parts.username or "-"), unquote(parts.password or "-"),
      unquote(parts.path.lstrip("/")) or "-", socket_dir or "/var/run/postgresql")
PY
}

is_local() { case "$1" in localhost | 127.0.0.1 | ::1 | -) return 0 ;; *) return 1 ;; esac; }

answers() {  # host port [socket_dir]
  if [ "$1" = "-" ]; then [ -S "$3/.s.PGSQL.$2" ]; return; fi
  local host=$1; [ "$host" = localhost ] && host=127.0.0.1
  (exec 3<>"/dev/tcp/$host/$2") 2>/dev/null
}

wait_for() {  # name host port [socket_dir]
  for _ in $(seq 1 60); do answers "$2" "$3" "${4:-}" && return 0; sleep 1; done
  echo "services: $1 did not start on port $3" >&2
  return 1
}

need() {  # command package name
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -n "$(compgen -G "/usr/lib/postgresql/*/bin/$1")" ] && return 0
  echo "services: $3 is not installed here (apt-get install $2), or point the URL at a running one" >&2
  return 1
}

read -r host port _ _ _ _ < <(parse "$AMQP_URL" 5672)
if is_local "$host" && ! answers "$host" "$port"; then
  need rabbitmq-server rabbitmq-server RabbitMQ || exit 1
  echo "starting RabbitMQ" >&2
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for RabbitMQ "$host" "$port" || exit 1
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi

read -r host port user password database socket_dir < <(parse "$DATABASE_URL" 5432)
if is_local "$host"; then
  if ! answers "$host" "$port" "$socket_dir"; then
    need pg_ctlcluster postgresql PostgreSQL || exit 1
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
    [ -n "$version" ] || { echo "services: no PostgreSQL cluster in /etc/postgresql (pg_createcluster)" >&2; exit 1; }
    echo "starting PostgreSQL $version" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for PostgreSQL "$host" "$port" "$socket_dir" || exit 1
  fi
  if [ "$user" != postgres ] && [ "$user" != - ] && [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
    as_postgres=(env -C / runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres)
    if [ -z "$("${as_postgres[@]}" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '${user//\'/\'\'}'")" ]; then
      echo "creating PostgreSQL role $user (login, createdb: the tests make databases of their own)" >&2
      pw_clause=""
      [ "$password" != - ] && pw_clause="PASSWORD :'pw'"
      "${as_postgres[@]}" -v role="$user" -v pw="$password" <<<"CREATE ROLE :\"role\" LOGIN CREATEDB $pw_clause;" || exit 1
    fi
    if [ "$database" != - ] && [ -z "$("${as_postgres[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '${database//\'/\'\'}'")" ]; then
      echo "creating PostgreSQL database $database owned by $user" >&2
      "${as_postgres[@]}" -v db="$database" -v role="$user" <<<"CREATE DATABASE :\"db\" OWNER :\"role\";" || exit 1
    fi
  fi
fi

if [ -n "$REDIS_URL" ]; then
  read -r host port _ _ _ _ < <(parse "$REDIS_URL" 6379)
  if is_local "$host" && ! answers "$host" "$port"; then
    need redis-server redis-server Redis || exit 1
    echo "starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no >/dev/null || true
    wait_for Redis "$host" "$port" || exit 1
  fi
fi
exit 0
