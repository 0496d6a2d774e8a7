"""uvicorn's sans-I/O WebSocket protocol, told to say ``PAYLOAD_TOO_LARGE`` the spec's way.

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
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import CloseCode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import error_frame

PAYLOAD_TOO_LARGE_REASON = ErrorCode.PAYLOAD_TOO_LARGE.value
LINGER_S = 2.0
"""how long a failed connection keeps draining the peer's data before the socket is closed."""


class _GatewayServerProtocol(ServerProtocol):
    def fail(self, code: CloseCode | int, reason: str = "") -> None:
        if code == CloseCode.MESSAGE_TOO_BIG:
            if self.state is OPEN:
                text = f"Payload too large: frames are limited to {self.max_message_size} bytes"
                error = ChatError(ErrorCode.PAYLOAD_TOO_LARGE, text)
                self.send_text(error_frame(error).encode())
            reason = PAYLOAD_TOO_LARGE_REASON
        super().fail(code, reason)


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
