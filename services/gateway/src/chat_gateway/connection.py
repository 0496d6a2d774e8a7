"""One client connection: its identity, current chat and ordered, bounded output.

Output goes through ``send``: frames are queued, and the frames queued in one turn of the event loop
are written at its end in one socket write (``Peer.write_frames``: a reply batch's frames for this
connection, or a history and its chat's frames, cost one syscall). When the socket cannot take them
at once (its buffer over the high-water mark) a flusher task sends them one by one through ASGI,
waiting for the socket; it exists only while there is something to wait for, so an idle connection
costs no task. Frames from the session and from the reply consumer keep the order in which they were
queued.

A client that does not keep up is dropped, never waited for: what is queued for it (here and in the
socket's write buffer) is bounded by ``WS_MAX_BUFFERED_BYTES``, and a close gets ``WS_SEND_TIMEOUT``
before the peer is aborted (``Peer.drop``). Sends are bounded by the protocol, which drops a peer
whose socket stays unwritable for ``WS_SEND_TIMEOUT`` (``chat_gateway.ws_protocol``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from starlette.websockets import WebSocket

from chat_common.frames import ChatType

if TYPE_CHECKING:
    from chat_gateway.inflight import PendingRequest

logger = logging.getLogger(__name__)


class Peer(Protocol):
    """The socket under a connection (``GatewayWebSocketProtocol``)."""

    on_drop: Callable[[str], None] | None

    def buffered_bytes(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        ...

    def drop(self, reason: str) -> None:
        """Abort the socket now; the receive loop then sees a disconnect."""
        ...

    def write_frames(self, texts: Iterable[str]) -> bool:
        """Write text frames in one socket write now; False (nothing written) when it cannot now."""
        ...


class _NoPeer:
    """Under a server other than the gateway's own protocol: nothing buffered is visible, and a drop
    only marks the connection closed (its close then bounds the wait)."""

    on_drop: Callable[[str], None] | None = None

    def buffered_bytes(self) -> int:
        return 0

    def drop(self, reason: str) -> None:
        if self.on_drop is not None:
            self.on_drop(reason)

    def write_frames(self, texts: Iterable[str]) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """One gateway's bounds on what it holds for a peer (shared by all its connections)."""

    max_buffered_bytes: int = 1 << 20
    send_timeout_s: float = 20.0


DEFAULT_LIMITS = OutputLimits()


def peer_of(websocket: WebSocket) -> Peer:
    peer: Peer | None = websocket.scope.get("extensions", {}).get("chat_gateway.peer")
    return peer if peer is not None else _NoPeer()


def utf8_length(text: str) -> int:
    """Bytes of ``text`` on the wire (cheap for ASCII, which ``isascii`` tells in constant time)."""
    return len(text) if text.isascii() else len(text.encode())


@dataclass(eq=False, slots=True)
class Connection:
    id: str
    websocket: WebSocket
    client_address: str
    peer: Peer = field(default_factory=_NoPeer)
    limits: OutputLimits = DEFAULT_LIMITS
    user_id: str | None = None
    token_expires_at: float = 0.0
    expiry_timer: asyncio.TimerHandle | None = None
    """closes the connection when its token expires (re-armed by ``refresh_token``)."""
    chat_id: str | None = None
    chat_type: ChatType | None = None
    last_activity: float = field(default_factory=time.monotonic)
    pending: dict[str, PendingRequest] = field(default_factory=dict)
    """requests in flight on this connection, by request id (written only by ``InFlight``)."""
    resumes: dict[str, PendingRequest] = field(default_factory=dict)
    """answers this connection asked to resume, by message id, until the worker's replay arrives
    (written only by ``InFlight``)."""
    frame_tokens: float = -1.0
    """token bucket of the per-connection frame rate; -1 until the first frame fills it."""
    frame_tokens_at: float = 0.0
    frame_limit_noticed_at: float = 0.0
    closed: bool = False
    dispatching: int = 0
    """client frames being handled now (a graceful shutdown waits for them before it closes)."""
    _out: deque[str] | None = None
    """created with the flusher and dropped with it: an idle connection keeps no queue (a deque is
    over 600 bytes, a fifth of what a bare idle connection costs)."""
    _flusher: asyncio.Task[None] | None = None
    _scheduled: asyncio.Handle | None = None
    """the end-of-turn write of what was queued in this turn."""
    _queued_bytes: int = 0
    """UTF-8 bytes of the frames in ``_out``."""

    def send(self, text: str) -> None:
        """Queue one frame; never blocks. A client that lets more than ``WS_MAX_BUFFERED_BYTES`` pile
        up (queued here plus unsent in the socket) is dropped; a frame into an empty queue always goes."""
        if self.closed:
            return
        size = utf8_length(text)
        out = self._out
        if out is None:
            out = self._out = deque()
        elif self._queued_bytes + self.peer.buffered_bytes() + size > self.limits.max_buffered_bytes:
            logger.warning(
                "connection %s: client too slow, %d frames (%d bytes) queued; dropped",
                self.id,
                len(out),
                self._queued_bytes + self.peer.buffered_bytes(),
            )
            self._drop("output_budget")
            return
        out.append(text)
        self._queued_bytes += size
        if self._flusher is None and self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_soon(self._write_queued)

    def _write_queued(self) -> None:
        """End of the turn: what was queued goes in one write, or to the flusher if the socket is full."""
        self._scheduled = None
        out = self._out
        if not out or self._flusher is not None:
            return
        if self.peer.write_frames(out):
            self._out = None
            self._queued_bytes = 0
            return
        self._flusher = asyncio.get_running_loop().create_task(self._flush(out))

    def _drop(self, reason: str) -> None:
        self.closed = True
        if self._out is not None:
            self._out.clear()
        self._queued_bytes = 0
        self.peer.drop(reason)

    async def _flush(self, out: deque[str]) -> None:
        try:
            while out:
                text = out.popleft()
                self._queued_bytes -= utf8_length(text)
                await self.websocket.send_text(text)
        except Exception:  # noqa: BLE001 - the peer went away mid-write: the receive loop sees the disconnect
            self.closed = True
        finally:
            if self._out is out:
                self._out = None
                self._queued_bytes = 0
            self._flusher = None

    async def drain(self, limit_s: float = 2.0) -> None:
        """Wait until the queued frames are written (or ``limit_s`` seconds)."""
        if self._scheduled is not None:
            await asyncio.sleep(0)  # the end-of-turn write was scheduled before this resumes: it runs first
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(flusher), limit_s)

    async def close(self, code: int, reason: str = "", *, timeout_s: float | None = None) -> None:
        """Write what is queued, then close with ``code``; within ``timeout_s`` (default
        ``WS_SEND_TIMEOUT``) or the peer is dropped. Returns by then whatever the peer does."""
        limit = self.limits.send_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        await self.drain(min(2.0, limit))
        await self.close_now(code, reason, timeout_s=max(0.0, deadline - time.monotonic()))

    async def close_now(self, code: int, reason: str = "", *, timeout_s: float | None = None) -> None:
        """Close with ``code`` without writing what is queued; the peer is dropped if the close frame
        cannot be written within ``timeout_s`` (default ``WS_SEND_TIMEOUT``)."""
        self.closed = True
        limit = self.limits.send_timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                await self.websocket.close(code, reason)
        except TimeoutError:
            logger.info("connection %s: close not written within %.1fs; dropped", self.id, limit)
            self.peer.drop("close_timeout")
        except Exception:  # noqa: BLE001, S110 - the peer is gone already: the receive loop sees the disconnect
            pass

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def take_frame(self, rate: float) -> float:
        """Count one received frame against ``rate`` per second (bursts of ``2 * rate``); return 0
        if it is allowed, else the seconds until the next one would be."""
        now = self.last_activity
        burst = 2 * rate
        if self.frame_tokens < 0:
            self.frame_tokens = burst
        else:
            self.frame_tokens = min(burst, self.frame_tokens + (now - self.frame_tokens_at) * rate)
        self.frame_tokens_at = now
        if self.frame_tokens >= 1:
            self.frame_tokens -= 1
            return 0.0
        return (1 - self.frame_tokens) / rate
