#!/usr/bin/env python3
"""The one way out of the fresh-machine check's network namespace: an HTTP proxy on its loopback.

    python3 scripts/fresh-machine-proxy.py NETNS PORT

Listens on 127.0.0.1:PORT *inside* the named network namespace (``ip netns add NETNS``; the
listening socket is made there with setns(2), then this process returns to the host's namespace)
and makes its outgoing connections from the host's namespace. So the namespace keeps nothing but
``lo``: its services cannot collide with this machine's, and package clients inside reach the
registries only through ``http_proxy``/``https_proxy``, as on a machine behind a proxy. ``CONNECT``
(HTTPS: the package index, uv) is piped as it is; a plain-HTTP request in absolute form (apt's
mirror) is sent on with ``Connection: close``. Standard library only; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from urllib.parse import urlsplit

CLONE_NEWNET = 0x40000000
HOP_BY_HOP = {b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization", b"te", b"upgrade"}


def listen_in(netns: str, port: int) -> socket.socket:
    libc = ctypes.CDLL(None, use_errno=True)
    host = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            return socket.create_server(("127.0.0.1", port), backlog=128)
        finally:
            if libc.setns(host, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the host")
    finally:
        os.close(host)
        os.close(target)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(client_r.readuntil(b"\r\n\r\n"), timeout=30)
        request_line, *header_lines = head[:-4].split(b"\r\n")
        method, target, version = request_line.split(b" ", 2)
        if method == b"CONNECT":
            host, _, port = target.decode().rpartition(":")
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout=30)
            client_w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target.decode())
            if url.scheme != "http" or not url.hostname:
                client_w.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                return
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(url.hostname, url.port or 80), timeout=30)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = [line for line in header_lines if line.split(b":", 1)[0].strip().lower() not in HOP_BY_HOP]
            up_w.write(b"\r\n".join([b" ".join([method, path.encode(), version]), *kept, b"Connection: close"]))
            up_w.write(b"\r\n\r\n")
        await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        pass
    finally:
        with contextlib.suppress(OSError):
            client_w.close()


async def serve(listener: socket.socket) -> None:
    server = await asyncio.start_server(handle, sock=listener, limit=1 << 20)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: fresh-machine-proxy.py NETNS PORT", file=sys.stderr)
        return 2
    listener = listen_in(argv[0], int(argv[1]))
    asyncio.run(serve(listener))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
