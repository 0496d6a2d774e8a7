#!/bin/sh
# Run by the nginx image's entrypoint before nginx starts (mounted into /docker-entrypoint.d/ by
# docker-compose.yml). POST /api/dev/token mints a token for any user id: that is fine for trials on
# this machine, and hands out every account once the port is reachable from elsewhere. So with
# dev tokens on, the published address must be a loopback one; else nginx does not start.
set -eu
host="${CHAT_PUBLISH_HOST:-127.0.0.1}"
dev=$(printf '%s' "${CHAT_DEV_TOKENS_ENABLED:-false}" | tr '[:upper:]' '[:lower:]')
case "$dev" in true | 1 | yes | on) ;; *) exit 0 ;; esac
case "$host" in 127.* | localhost | ::1 | "[::1]") exit 0 ;; esac
echo "chat: PUBLISH_HOST=$host with DEV_TOKENS_ENABLED=$dev would let anyone who reaches the port" >&2
echo "chat: sign in as any user. Set DEV_TOKENS_ENABLED=false and a real JWT_SECRET (or PUBLISH_HOST=127.0.0.1)." >&2
exit 1
