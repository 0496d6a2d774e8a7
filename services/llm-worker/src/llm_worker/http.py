"""A minimal HTTP endpoint for the worker: ``/metrics`` (Prometheus) and ``/health`` (JSON).

Plain asyncio, so the worker needs no web framework for two read-only paths.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


async def serve_http(
    host: str, port: int, registry: CollectorRegistry, health: Callable[[], tuple[int, dict[str, object]]]
) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request_line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request_line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path.startswith("/metrics"):
                status, body, content_type = 200, generate_latest(registry), CONTENT_TYPE_LATEST
            elif path.startswith("/health"):
                status, document = health()
                body, content_type = orjson.dumps(document), "application/json"
            else:
                status, body, content_type = 404, b"not found\n", "text/plain"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "OK")
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
