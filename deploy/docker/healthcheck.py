"""Container health check without curl: ``python /app/healthcheck.py gateway|worker|monitor``.

Exit 0 when the service answers as healthy, 1 otherwise. It reads the same environment variables as
the service (``GATEWAY_PORT``, ``WORKER_METRICS_PORT``, ``MONITOR_PORT``, ``HOST``), so a port moved
by configuration moves the check with it.

- gateway: ``GET /api/websocket/health`` must answer 200 (503 means critical, e.g. RabbitMQ lost).
- worker: ``GET /health`` must answer 200 (503 while it is not connected to RabbitMQ).
- monitor: ``GET /api/websocket/health`` must answer the health document, 200 or 503: a 503 there
  reports the *cluster* as critical, not the monitor process, which is alive and serving.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from chat_common.settings import Settings

TIMEOUT_S = 3.0


def target(role: str, settings: Settings) -> tuple[str, frozenset[int]]:
    """The URL to probe for ``role`` and the HTTP statuses that count as healthy."""
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if role == "gateway":
        return f"http://{host}:{settings.gateway_port}/api/websocket/health", frozenset({200})
    if role == "worker":
        return f"http://{host}:{settings.worker_metrics_port}/health", frozenset({200})
    if role == "monitor":
        return f"http://{host}:{settings.monitor_port}/api/websocket/health", frozenset({200, 503})
    raise ValueError(f"unknown role {role!r}: expected gateway, worker or monitor")


def probe(url: str, healthy: frozenset[int]) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - fixed http URL
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        return False, f"{url}: {exc}"
    try:
        document = json.loads(body)
    except ValueError:
        return False, f"{url}: HTTP {status}, not a JSON health document"
    ok = status in healthy and isinstance(document, dict) and "status" in document
    return ok, f"{url}: HTTP {status} {document.get('status') if isinstance(document, dict) else ''}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: healthcheck.py gateway|worker|monitor", file=sys.stderr)
        return 1
    try:
        url, healthy = target(argv[1], Settings())
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    ok, detail = probe(url, healthy)
    print(detail)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
