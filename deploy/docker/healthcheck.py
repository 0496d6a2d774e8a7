"""Container health check without curl: ``python /app/healthcheck.py gateway|worker|monitor``.

Exit 0 when the service answers ``GET /readyz`` with 200: it can take work now (gateway: connected
to RabbitMQ, not draining, below capacity; worker: connected, not stopping; monitor: connected). It
reads the same environment variables as the service (``GATEWAY_PORT``, ``WORKER_METRICS_PORT``,
``MONITOR_PORT``, ``HOST`` for the gateway, ``INTERNAL_HOST`` for the others), so a port moved by
configuration moves the check with it. The model's failures and the cluster's health are not part of
it: they are in ``/api/websocket/health``, for humans and alerts.
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

    def local(host: str) -> str:
        return host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"

    if role == "gateway":
        return f"http://{local(settings.host)}:{settings.gateway_port}/readyz", frozenset({200})
    if role == "worker":
        return f"http://{local(settings.internal_host)}:{settings.worker_metrics_port}/readyz", frozenset({200})
    if role == "monitor":
        return f"http://{local(settings.internal_host)}:{settings.monitor_port}/readyz", frozenset({200})
    raise ValueError(f"unknown role {role!r}: expected gateway, worker or monitor")


def probe(url: str, healthy: frozenset[int], role: str) -> tuple[bool, str]:
    """Whether ``url`` answers a readiness document of ``role`` with a healthy status."""
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
        return False, f"{url}: HTTP {status}, not a JSON readiness document"
    ok = status in healthy and isinstance(document, dict) and document.get("role") == role
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
    ok, detail = probe(url, healthy, argv[1])
    print(detail)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
