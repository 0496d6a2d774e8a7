"""A minimal HTTP endpoint for the worker: ``/metrics`` (Prometheus), ``/health`` (JSON), ``/readyz``
and ``/livez`` (probes).

Plain asyncio, so the worker needs no web framework for four read-only paths. An internal port
(``INTERNAL_HOST``, loopback by default): still, whatever reaches it is answered without a traceback,
a malformed request with 400, a method other than GET/HEAD with 405, a request line or headers over
``MAX_LINE``/``MAX_HEADER_BYTES`` with 431, and a peer that does not finish its request within
``REQUEST_TIMEOUT_S`` is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)

MAX_LINE = 8192
MAX_HEADER_BYTES = 16_384
MAX_HEADERS = 64
REQUEST_TIMEOUT_S = 5.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """Method and path of the request (headers read and ignored), or ``_BadRequest``."""
    try:
        request_line = await reader.readuntil(b"\n")
        total, count = len(request_line), 0
        while True:
            line = await reader.readuntil(b"\n")
            if line in (b"\r\n", b"\n"):
                break
            total, count = total + len(line), count + 1
            if total > MAX_HEADER_BYTES or count > MAX_HEADERS:
                raise _BadRequest(431)
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest(431) from exc
    except asyncio.IncompleteReadError as exc:
        raise _BadRequest(400) from exc
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _BadRequest(400)
    return parts[0], parts[1]


def _refusal(status: int) -> tuple[int, bytes, str]:
    return status, f"{_REASONS[status]}\n".encode(), "text/plain"


async def _discard_rest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close and read what the peer is still sending for a moment, so that it reads the error
    instead of a TCP reset (closing with unread data resets the connection)."""
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(1.0):
            for _ in range(64):  # at most 64 x 64 KiB
                if not await reader.read(65_536):
                    break


async def serve_http(
    host: str,
    port: int,
    registry: CollectorRegistry,
    health: Callable[[], tuple[int, dict[str, object]]],
    ready: Callable[[], list[str]],
) -> asyncio.Server:
    """Serve the four paths on ``host:port``; ``ready`` lists why the worker cannot take work (empty: ready)."""

    def respond(path: str) -> tuple[int, bytes, str]:
        if path.startswith("/metrics"):
            return 200, generate_latest(registry), CONTENT_TYPE_LATEST
        if path.startswith("/health"):
            status, document = health()
            return status, orjson.dumps(document), "application/json"
        if path.startswith("/readyz"):
            reasons = ready()
            document = {"status": "not_ready" if reasons else "ready", "role": "worker", "reasons": reasons}
            return (503 if reasons else 200), orjson.dumps(document), "application/json"
        if path.startswith("/livez"):
            return 200, b'{"status":"alive","role":"worker"}', "application/json"
        return 404, b"not found\n", "text/plain"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    method, path = await _read_request(reader)
                status, body, content_type = respond(path) if method in ("GET", "HEAD") else _refusal(405)
            except _BadRequest as bad:
                (status, body, content_type), method = _refusal(bad.status), "GET"
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
            if status in (400, 431):
                await _discard_rest(reader, writer)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_LINE)
