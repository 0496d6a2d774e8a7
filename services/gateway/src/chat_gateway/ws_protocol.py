"""uvicorn's sans-I/O WebSocket protocol, told to refuse oversized and non-UTF-8 frames the spec's way.

The frame limit (``WS_MAX_PAYLOAD``) is enforced by the ``websockets`` parser itself: it reads a
frame's header, sees the announced length is over the limit (counting earlier fragments of the same
message) and fails the connection before reading the payload, so an oversized frame is never
buffered whole. Stock uvicorn then closes with 1009 and the parser's own reason. Here:

- the client first gets the spec's ``error`` frame with code ``PAYLOAD_TOO_LARGE``, then a close
  frame with code 1009 whose reason is ``PAYLOAD_TOO_LARGE`` (for clients that see only the close
  event, such as browsers);
- the TCP connection is half-closed and lingers briefly while the rest of the oversized frame is
  read and discarded, so the peer's kernel does not answer our close with a reset that would throw
  away the error and close frames before the client reads them.

The ASGI application sees ``websocket.disconnect`` with code 1009 and reason ``PAYLOAD_TOO_LARGE``.

A text frame that is not valid UTF-8 fails the connection the same way, with ``INVALID_MESSAGE`` and
close code 1007 as RFC 6455 requires (stock uvicorn logs a traceback for each such frame).

A peer that does not read cannot hold its socket (issue 11): stock uvicorn writes every pong whatever
the write buffer holds and, once the buffer is over its high-water mark, makes every send and close
wait for the peer for ever. Here every write goes through ``_GuardedTransport``:

- the socket's write buffer is bounded by ``WS_MAX_BUFFERED_BYTES``: a write that leaves more than
  that buffered (a flood of pings never read, frames the peer does not take) drops the peer;
- writing may stay paused (the buffer over its high-water mark) for at most ``WS_SEND_TIMEOUT``;
- the peer has ``WS_SEND_TIMEOUT`` to answer our close frame (uvicorn: 10 s), and a close whose bytes
  it does not take within as long again (at shutdown: one second) ends in an abort, as asyncio's
  ``close`` would otherwise keep the socket until the buffer drains.

So a peer that never reads is let go at most ``2 * WS_SEND_TIMEOUT`` after the gateway decides to
close it, and ``WS_SEND_TIMEOUT`` after its socket stopped taking our writes, whichever comes first.
Bytes the kernel has taken (its send buffer, up to ``net.ipv4.tcp_wmem``'s maximum) are outside the
budget: they are not the process's memory.

A peer that sends WebSocket pings faster than ``WS_MAX_FRAMES_PER_SECOND`` (bursts of twice that) is
dropped too: answering a flood of pings took the whole event loop.

Dropping is ``transport.abort()`` (nginx, Envoy and Centrifugo do the same); the application learns
of it as ``websocket.disconnect`` with code 1006, and through ``Peer.on_drop``. The protocol is the
``Peer`` of its connection, put in the ASGI scope under ``PEER_EXTENSION``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, cast

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import CloseCode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from chat_common.errors import ChatError, ErrorCode
from chat_common.server_frames import error_frame

PAYLOAD_TOO_LARGE_REASON = ErrorCode.PAYLOAD_TOO_LARGE.value
INVALID_UTF8_REASON = ErrorCode.INVALID_MESSAGE.value
LINGER_S = 2.0
"""how long a failed connection keeps draining the peer's data before the socket is closed."""
PEER_EXTENSION = "chat_gateway.peer"
"""the ASGI scope extension under which the protocol hands itself to the application."""
SHUTDOWN_LINGER_S = 1.0
"""how long a closing socket may keep unsent bytes at server shutdown before it is aborted."""

logger = logging.getLogger(__name__)


class _GuardedTransport:
    """The socket's transport as the protocol sees it: writes bounded in bytes, closes in time.

    Every write in uvicorn's protocol goes through here, the pongs it writes without looking at flow
    control included. A write into an empty buffer always goes (one frame larger than the budget is
    a history, not a flood); a write that leaves more than ``budget`` bytes buffered drops the peer.
    """

    __slots__ = ("_linger", "_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: GatewayWebSocketProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._linger: asyncio.TimerHandle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        transport = self._transport
        if transport.is_closing() and self._protocol.dropped is not None:
            return
        before = transport.get_write_buffer_size()
        transport.write(data)
        if before and transport.get_write_buffer_size() > self._protocol.max_buffered_bytes:
            self._protocol.drop("output_budget")

    def close(self) -> None:
        self._transport.close()
        if self._linger is None:
            self.linger(self._protocol.close_linger_s)

    def linger(self, seconds: float) -> None:
        """Abort in ``seconds`` if the buffer is not written by then (asyncio keeps a closed transport
        until its buffer is written, for ever if the peer does not read)."""
        self.cancel_linger()
        if self._transport.get_write_buffer_size():
            self._linger = self._protocol.loop.call_later(seconds, self._abort_lingering)

    def _abort_lingering(self) -> None:
        self._linger = None
        if self._transport.get_write_buffer_size():
            self._protocol.drop("close_timeout")

    def abort(self) -> None:
        self.cancel_linger()
        self._transport.abort()

    def cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._transport.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _GatewayServerProtocol(ServerProtocol):
    def fail(self, code: CloseCode | int, reason: str = "") -> None:
        """Fail the connection; for the two failures a client can cause with a frame's content, say
        which spec error it was, in an error frame and as the close reason."""
        refusal = _REFUSALS.get(code)
        if refusal is not None:
            error = refusal(self.max_message_size)
            reason = error.code.value
            if self.state is OPEN:
                self.send_text(error_frame(error).encode())
        super().fail(code, reason)


def _payload_too_large(limit: int | None) -> ChatError:
    return ChatError(ErrorCode.PAYLOAD_TOO_LARGE, f"Payload too large: frames are limited to {limit} bytes")


def _invalid_utf8(_: int | None) -> ChatError:
    return ChatError(ErrorCode.INVALID_MESSAGE, "Invalid message: text frame is not valid UTF-8")


_REFUSALS: dict[int, Callable[[int | None], ChatError]] = {
    CloseCode.MESSAGE_TOO_BIG: _payload_too_large,
    CloseCode.INVALID_DATA: _invalid_utf8,
}


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """Pass ``configured(...)`` as ``ws=`` to ``uvicorn.run``; otherwise the stock ``websockets-sansio``
    protocol, with the output limits described above. It is also the connection's ``Peer``."""

    max_buffered_bytes: ClassVar[int] = 1 << 20
    send_timeout_s: ClassVar[float] = 20.0
    max_pings_per_second: ClassVar[float] = 20.0

    @classmethod
    def configured(
        cls, *, max_buffered_bytes: int, send_timeout_s: float, max_pings_per_second: float
    ) -> type[GatewayWebSocketProtocol]:
        """This protocol with the output limits of one gateway's settings."""
        attributes = {
            "max_buffered_bytes": max_buffered_bytes,
            "send_timeout_s": send_timeout_s,
            "max_pings_per_second": max_pings_per_second,
        }
        return type(cls.__name__, (cls,), attributes)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dropped: str | None = None
        """why the peer was dropped (``output_budget``, ``send_timeout``, ``close_timeout``)."""
        self.on_drop: Callable[[str], None] | None = None
        """called once when the peer is dropped (the application counts and logs it)."""
        self.close_linger_s = self.send_timeout_s
        self.close_timeout = self.send_timeout_s  # uvicorn's wait for the peer's close frame (10 s)
        self._stall: asyncio.TimerHandle | None = None
        self._guard: _GuardedTransport | None = None
        self._ping_tokens = 2 * self.max_pings_per_second
        self._ping_at = 0.0
        extensions = []
        if self.config.ws_per_message_deflate:
            extensions.append(
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
                )
            )
        self.conn = _GatewayServerProtocol(
            extensions=extensions,
            max_size=self.config.ws_max_size,
            logger=logging.getLogger("uvicorn.error"),
        )
        self._failed = False

    # ------------------------------------------------------------------ output limits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard = _GuardedTransport(cast(asyncio.Transport, transport), self)  # uvloop's is no subclass
        super().connection_made(self._guard)  # type: ignore[arg-type]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            self.scope["extensions"][PEER_EXTENSION] = self  # type: ignore[assignment]

    def buffered_bytes(self) -> int:
        """Bytes written to the socket's transport and not yet taken by the kernel."""
        return self.transport.get_write_buffer_size()

    def write_frames(self, texts: Iterable[str]) -> bool:
        """Write ``texts`` as text frames in one socket write, now; False (nothing written) when the
        socket cannot take them now (writing paused, closing, gone): the caller then sends them one
        by one through ASGI, which waits for the socket as uvicorn does."""
        if (
            self.dropped is not None
            or self.disconnected
            or self.close_sent
            or not self.handshake_complete
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.conn.state is not OPEN
        ):
            return False
        conn = self.conn
        for text in texts:
            conn.send_text(text.encode())
        self.transport.write(b"".join(conn.data_to_send()))
        return True

    def drop(self, reason: str) -> None:
        """Abort the connection now (idempotent); the application sees a 1006 disconnect."""
        if self.dropped is not None:
            return
        self.dropped = reason
        self._cancel_stall()
        logger.info(
            "peer %s dropped: %s (%d bytes unsent)",
            f"{self.client[0]}:{self.client[1]}" if self.client else "-",
            reason,
            self.transport.get_write_buffer_size(),
        )
        if self.on_drop is not None:
            try:
                self.on_drop(reason)
            except Exception:
                logger.exception("on_drop failed")
        self.transport.abort()

    def handle_ping(self) -> None:
        # Each pong costs a parse and a write: tens of thousands of pings a second from a few
        # sockets took the whole loop (the sentinels' own frames waited seconds). Browsers send no
        # pings and libraries one every 20 s or so; a peer over the frame rate is dropped.
        if self.dropped is not None:
            return
        now = self.loop.time()
        rate = self.max_pings_per_second
        self._ping_tokens = min(2 * rate, self._ping_tokens + (now - self._ping_at) * rate)
        self._ping_at = now
        if self._ping_tokens < 1:
            self.drop("ping_flood")
            return
        self._ping_tokens -= 1
        super().handle_ping()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None and self.dropped is None:
            self._stall = self.loop.call_later(self.send_timeout_s, self.drop, "send_timeout")

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_stall()

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_stall()
        if self._guard is not None:
            self._guard.cancel_linger()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        # the server is stopping: a peer gets a second, not WS_SEND_TIMEOUT, to take our close frame
        self.close_linger_s = min(self.close_linger_s, SHUTDOWN_LINGER_S)
        super().shutdown()
        if self._guard is not None:
            self._guard.linger(self.close_linger_s)

    def send_receive_event_to_app(self) -> None:
        # uvicorn's own version logs a traceback at ERROR for every text frame that is not UTF-8 and
        # raises if the connection is already closing; here such a frame fails the connection with
        # 1007 (RFC 6455 §8.1) quietly, like any other protocol error.
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        message: ASGIReceiveEvent
        if self.curr_msg_data_type == "text":
            try:
                message = {"type": "websocket.receive", "text": data.decode(), "bytes": None}
            except UnicodeDecodeError:
                self.conn.fail(CloseCode.INVALID_DATA)
                self.handle_parser_exception()
                return
        else:
            message = {"type": "websocket.receive", "bytes": data, "text": None}
        self.queue.put_nowait(message)
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def handle_parser_exception(self) -> None:
        # ``data_received`` calls this for every chunk once the parser has failed; act once.
        if self._failed:
            return
        self._failed = True
        close = self.conn.close_sent
        code, reason = (close.code, close.reason) if close is not None else (1006, "")
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        output = self.conn.data_to_send()
        self.transport.write(b"".join(output))
        self.close_sent = True
        if self.transport.can_write_eof() and not self.transport.is_closing():
            # Half-close: our FIN follows the close frame; the parser now discards what still
            # arrives, and the socket is closed when the peer closes its side or after LINGER_S.
            self.transport.write_eof()
            if self.close_timer is None:
                self.close_timer = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()
