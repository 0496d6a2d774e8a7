"""One client connection: its identity, current chat, in-flight requests and ordered output.

Output goes through ``send``: frames are queued and written by a flusher task that exists only while
there is something to write, so an idle connection costs no task, and frames from the session and
from the reply consumer keep the order in which they were queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from opentelemetry.trace import Span
from starlette.websockets import WebSocket

from chat_common.frames import ChatType

logger = logging.getLogger(__name__)

MAX_QUEUED_FRAMES = 2000
"""a client that falls this far behind is disconnected rather than buffered without bound."""


@dataclass(slots=True)
class PendingRequest:
    request_id: str
    user_message_id: str
    assistant_message_id: str
    chat_id: str
    started: float
    timer: asyncio.TimerHandle | None = None
    next_seq: int = 0
    attempt: int = 0
    """the request's delivery whose frames are being forwarded (0 before the first frame)."""
    first_chunk_at: float | None = None
    span: Span | None = None
    """the message's root span (``chat_gateway.tracing``), ended when the request is over."""


@dataclass(eq=False, slots=True)
class Connection:
    id: str
    websocket: WebSocket
    client_address: str
    user_id: str | None = None
    token_expires_at: float = 0.0
    expiry_timer: asyncio.TimerHandle | None = None
    """closes the connection when its token expires (re-armed by ``refresh_token``)."""
    chat_id: str | None = None
    chat_type: ChatType | None = None
    last_activity: float = field(default_factory=time.monotonic)
    pending: dict[str, PendingRequest] = field(default_factory=dict)
    resumes: dict[str, PendingRequest] = field(default_factory=dict)
    """answers this connection asked to resume, by message id, until the worker's replay arrives."""
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

    def send(self, text: str) -> None:
        """Queue one frame; never blocks. A client that stops reading is cut off."""
        if self.closed:
            return
        out = self._out
        if out is None:
            out = self._out = deque()
        elif len(out) >= MAX_QUEUED_FRAMES:
            logger.warning("connection %s: client too slow, %d frames queued; closing", self.id, len(out))
            out.clear()
            self._out = None
            self.closed = True
            self._flusher = asyncio.get_running_loop().create_task(self._close_now(1008))
            return
        out.append(text)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush(out))

    async def _flush(self, out: deque[str]) -> None:
        try:
            while out:
                await self.websocket.send_text(out.popleft())
        except Exception:  # noqa: BLE001 - the peer went away mid-write: the receive loop sees the disconnect
            self.closed = True
        finally:
            if self._out is out:
                self._out = None
            self._flusher = None

    async def drain(self, limit_s: float = 2.0) -> None:
        """Wait until the queued frames are written (or ``limit_s`` seconds)."""
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(flusher), limit_s)

    async def close(self, code: int, reason: str = "") -> None:
        """Write what is queued, then close with ``code``."""
        await self.drain()
        await self._close_now(code, reason)

    async def _close_now(self, code: int, reason: str = "") -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason)

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
