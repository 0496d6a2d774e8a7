"""The internal HTTP endpoints (the monitor's API and dashboard, the worker's /metrics, /health,
/readyz) listen on INTERNAL_HOST (loopback by default, whatever HOST says) and answer malformed or
oversized requests with 400/405/431, without a traceback in the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.cluster import Cluster


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) with a listening socket on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` raw and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65_536), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


HUGE_LINE = b"GET /metrics?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
MANY_HEADERS = b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 200) for i in range(200)) + b"\r\n"
NOT_HTTP = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"


async def test_internal_endpoints_listen_on_loopback_and_refuse_bad_requests_without_a_traceback(rel: Cluster) -> None:
    # HOST=0.0.0.0 is the gateway's public address: the internal endpoints must not follow it
    worker, monitor = await asyncio.gather(rel.worker(HOST="0.0.0.0"), rel.monitor(HOST="0.0.0.0"))
    for process in (worker, monitor):
        assert listening_addresses(int(process.extra["port"])) == {"0100007F"}, process.name

    port = int(worker.extra["port"])
    for _ in range(3):
        assert (await exchange(port, HUGE_LINE)).startswith(b"HTTP/1.1 431 ")
    assert (await exchange(port, MANY_HEADERS)).startswith(b"HTTP/1.1 431 ")
    assert (await exchange(port, NOT_HTTP)).startswith(b"HTTP/1.1 400 ")
    assert (await exchange(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
    assert (await exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 ")  # still serving

    port = int(monitor.extra["port"])
    for request in (HUGE_LINE, MANY_HEADERS, NOT_HTTP):
        answer = await exchange(port, request)
        assert answer[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 431"), answer[:200]
    assert (await exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 200 ")

    for process in (worker, monitor):
        log = process.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert " ERROR " not in log, log[-3000:]
