"""uvicorn's h11 protocol with a deadline on the request headers (slowloris before the upgrade).

Stock uvicorn arms no timer until a first response has been sent: a socket that sends nothing, or
sends its handshake a byte at a time, stays open for ever, before any WebSocket limit can see it.
Here every request (the WebSocket handshake, and every keep-alive request after a response) must
have its headers complete within ``WS_HANDSHAKE_TIMEOUT`` of its first byte (of the connection,
for the first); otherwise the socket is aborted, as nginx does with ``client_header_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)


class GatewayHttpProtocol(H11Protocol):
    """Pass ``configured(...)`` as ``http=`` to ``uvicorn.run``."""

    header_timeout_s: ClassVar[float] = 5.0

    @classmethod
    def configured(cls, *, header_timeout_s: float) -> type[GatewayHttpProtocol]:
        return type(cls.__name__, (cls,), {"header_timeout_s": header_timeout_s})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._awaiting_headers():
            self._arm_header_timer()  # the first byte of a keep-alive request
        super().data_received(data)
        if self._header_timer is not None and not self._awaiting_headers():
            self._cancel_header_timer()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._cancel_header_timer()  # from here the WebSocket protocol owns the socket and its limits
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return bool(self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        logger.info(
            "handshake refused: request headers not complete within %.1fs address=%s", self.header_timeout_s, client
        )
        self.transport.abort()
