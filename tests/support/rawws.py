"""Hostile WebSocket peers over raw TCP sockets, and the gateway's own view of which sockets it holds.

A real client library reads what the server sends (that is the point of it); these peers do what an
attacker does instead: a receive buffer of a few KB that is never read, pings by the thousand, a
handshake sent a byte at a time. Whether the gateway still holds a peer is read from the gateway's
side (``held_ports``: the sockets in ``/proc/<pid>/fd`` and their remote ports in ``/proc/net/tcp``),
not from the peer's: a peer that does not read cannot tell a closed connection from a quiet one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from tests.support.wait import eventually

OP_TEXT, OP_CLOSE, OP_PING = 0x1, 0x8, 0x9


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def text(kind: str, **data: Any) -> bytes:
    return frame(OP_TEXT, json.dumps({"type": kind, "data": data}).encode())


def upgrade_request(host: str, port: int, *, client_address: str, path: str = "/ws/chat") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nX-Forwarded-For: {client_address}\r\n\r\n"
    ).encode()


class RawPeer:
    """One TCP connection to the gateway with a small receive buffer that nobody reads."""

    def __init__(self, sock: socket.socket, opened: float) -> None:
        self.sock = sock
        self.opened = opened
        self.port = int(sock.getsockname()[1])
        self.failed = False
        """the peer saw the connection reset (or closed) when it wrote."""

    @classmethod
    async def connect(cls, host: str, port: int, *, rcvbuf: int = 4096) -> RawPeer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: no autotuning
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        return cls(sock, time.monotonic())

    @classmethod
    async def upgraded(cls, host: str, port: int, *, client_address: str, rcvbuf: int = 4096) -> RawPeer:
        """Connected, handshake done (101 read, nothing after it)."""
        peer = await cls.connect(host, port, rcvbuf=rcvbuf)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(peer.sock, upgrade_request(host, port, client_address=client_address))
        response = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in response:
                # byte by byte: what follows the headers stays unread in the kernel
                chunk = await loop.sock_recv(peer.sock, 1)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                response += chunk
        status = response.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"handshake refused: {status!r}")
        return peer

    def write(self, data: bytes) -> bool:
        """Write without waiting; False when the kernel buffer is full, or the connection is gone."""
        if self.failed:
            return False
        try:
            self.sock.send(data)
        except BlockingIOError:
            return False
        except OSError:
            self.failed = True
            return False
        return True

    async def send(self, data: bytes, *, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


async def flood_pings(peer: RawPeer, *, until: float, payload: bytes = b"x" * 125, batch: int = 256) -> int:
    """Send pings without reading until ``until`` or until the connection is gone; returns how many."""
    ping = frame(OP_PING, payload)
    sent = 0
    while time.monotonic() < until and not peer.failed:
        for _ in range(batch):
            if not peer.write(ping):
                break
            sent += 1
        await asyncio.sleep(0.005)  # the flood's pace (the behaviour under test), and a yield to the loop
    return sent


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(entry)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def held_ports(pid: int, server_port: int) -> dict[int, int]:
    """Remote ports of the TCP connections to ``server_port`` that process ``pid`` holds open, each
    with the bytes in its kernel send queue (``tx_queue``: written by the gateway, not yet acked)."""
    inodes = _socket_inodes(pid)
    ports: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == server_port and int(fields[9]) in inodes:
                    ports[int(fields[2].rsplit(":", 1)[1], 16)] = int(fields[4].split(":")[0], 16)
    return ports


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class RssPeak:
    """The peak resident memory of process ``pid`` since it was made (or ``restart``), sampled every
    ``every`` seconds while ``run`` runs (cancel it to stop)."""

    def __init__(self, pid: int, *, every: float) -> None:
        self.pid = pid
        self.every = every
        self.baseline = self.peak = rss_bytes(pid)

    def restart(self) -> int:
        """Take a new baseline, which is also the peak so far; return it."""
        self.baseline = self.peak = rss_bytes(self.pid)
        return self.baseline

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(self.every)  # a sampler's period: it measures, nothing waits on it


async def released_within(pid: int, server_port: int, peers: list[RawPeer], timeout: float) -> dict[int, float]:
    """Wait (at most ``timeout`` s) until the gateway holds none of ``peers``; return, for each peer
    released, the seconds from its ``opened`` to the first check that found it gone."""
    released: dict[int, float] = {}

    def all_released() -> bool:
        held = held_ports(pid, server_port)
        now = time.monotonic()
        for peer in peers:
            if peer.port not in held and peer.port not in released:
                released[peer.port] = now - peer.opened
        return len(released) == len(peers)

    with contextlib.suppress(AssertionError):  # a peer still held is the caller's to judge
        await eventually(all_released, timeout=timeout, interval=0.05)
    return released


async def seed_chat(database_url: str, user_id: str, *, messages: int = 50, size: int = 4000) -> str:
    """A ``messages`` chat of ``user_id`` with ``messages`` stored messages of ``size`` characters
    each (straight into PostgreSQL: no rate limit to wait for); returns its id."""
    import uuid

    from chat_common.store import ChatStore, create_pool

    pool = await create_pool(database_url, max_size=2, migrate=False)
    try:
        store = ChatStore(pool)
        chat = await store.create_chat(user_id, "messages")
        for index in range(messages):
            body = (f"{index:04d} " + "x" * size)[:size]
            await store.add_user_message(
                message_id=str(uuid.uuid4()), chat_id=chat.id, request_id=str(uuid.uuid4()), content=body
            )
        return chat.id
    finally:
        await pool.close()


async def until_held(pid: int, server_port: int, peer: RawPeer, timeout: float = 5.0) -> None:
    """Wait until the gateway has accepted ``peer`` (its socket is in the gateway's fd table)."""
    await eventually(
        lambda: peer.port in held_ports(pid, server_port),
        timeout=timeout,
        interval=0.02,
        what=f"the gateway accepting port {peer.port}",
    )


class SocketWatch:
    """Polls the gateway's fd table; for each peer added, the seconds from its ``opened`` until the
    first poll that found the gateway no longer holding it. Add only peers the gateway has held
    (an upgrade answered, or ``until_held``)."""

    def __init__(self, pid: int, server_port: int, *, every: float = 0.05) -> None:
        self.pid, self.server_port, self.every = pid, server_port, every
        self.groups: dict[int, str] = {}
        self.peers: dict[int, RawPeer] = {}
        self.released: dict[int, float] = {}
        self.stalled: dict[int, tuple[int, float]] = {}
        """per peer, the largest kernel send queue seen and when it was first seen: from then on the
        peer took nothing more (the kernel's buffer is full), so the gateway's own deadlines run."""

    def add(self, group: str, peer: RawPeer) -> None:
        self.groups[peer.port] = group
        self.peers[peer.port] = peer

    def poll(self) -> None:
        held = held_ports(self.pid, self.server_port)
        now = time.monotonic()
        for port, peer in self.peers.items():
            if port in self.released:
                continue
            if port not in held:
                self.released[port] = now - peer.opened
                continue
            queued = held[port]
            if queued > self.stalled.get(port, (0, 0.0))[0]:
                self.stalled[port] = (queued, now)

    def held_after_stall(self, port: int) -> float | None:
        """Seconds from the peer's send queue reaching its peak to its release (None: not released)."""
        if port not in self.released:
            return None
        peer = self.peers[port]
        _, since = self.stalled.get(port, (0, peer.opened))
        return max(0.0, peer.opened + self.released[port] - since)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.poll()
            await asyncio.sleep(self.every)  # a sampler's period: it measures, nothing waits on it

    def pending(self) -> int:
        return len(self.peers) - len(self.released)
