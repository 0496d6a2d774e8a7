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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import CloseCode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import error_frame

PAYLOAD_TOO_LARGE_REASON = ErrorCode.PAYLOAD_TOO_LARGE.value
INVALID_UTF8_REASON = ErrorCode.INVALID_MESSAGE.value
LINGER_S = 2.0
"""how long a failed connection keeps draining the peer's data before the socket is closed."""


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
    """Pass as ``ws=`` to ``uvicorn.run``; otherwise the stock ``websockets-sansio`` protocol."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
