"""One WebSocket connection from accept to close: the door, the first-frame rule, then the frame loop.

Contract: ``Session.serve`` owns the connection. Whatever ends it (client close, error, server
shutdown), the connection leaves the registry, its user slot is released and its in-flight answers
are cancelled before ``serve`` returns. Nothing a client sends raises out of ``serve``.

A session is in one phase at a time (as starlette's ``WebSocketEndpoint`` dispatches on one loop):
``AUTHENTICATING`` until a ``join_chat`` whose token verifies arrives within ``WS_AUTH_TIMEOUT``
(anything else first is refused ``UNAUTHORIZED`` and closed), then ``OPEN`` (each frame checked
against the token's expiry and the frame rate, parsed once, dispatched), then ``CLOSED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
import uuid

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from chat_common.envelopes import ControlMessage
from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import JoinChat, parse_client_frame, peek_request_id
from chat_gateway.admission import AdmissionStore
from chat_gateway.broker import GatewayBroker
from chat_gateway.connection import Connection, OutputLimits, peer_of
from chat_gateway.door import Door
from chat_gateway.handlers import FrameHandler
from chat_gateway.inflight import InFlight
from chat_gateway.metrics import GatewayMetrics
from chat_gateway.refusals import Refusal, record_refusal, refuse
from chat_gateway.registry import ConnectionRegistry
from chat_gateway.tokens import TokenKeeper
from chat_gateway.ws_protocol import INVALID_UTF8_REASON, PAYLOAD_TOO_LARGE_REASON

logger = logging.getLogger(__name__)


class Phase(enum.Enum):
    AUTHENTICATING = "authenticating"
    OPEN = "open"
    CLOSED = "closed"


class Sessions:
    """What every connection's session uses; one per gateway process."""

    def __init__(
        self,
        *,
        door: Door,
        registry: ConnectionRegistry,
        handler: FrameHandler,
        tokens: TokenKeeper,
        inflight: InFlight,
        admission: AdmissionStore,
        broker: GatewayBroker,
        metrics: GatewayMetrics,
        output: OutputLimits,
        auth_timeout_s: float,
        max_frames_per_second: float,
    ) -> None:
        self.door, self.registry, self.handler, self.tokens = door, registry, handler, tokens
        self.inflight, self.admission, self.broker, self.metrics = inflight, admission, broker, metrics
        self.output = output
        self.auth_timeout_s = auth_timeout_s
        self.max_frames_per_second = max_frames_per_second

    async def serve(self, websocket: WebSocket) -> None:
        client = websocket.client
        address = client.host if client else "unknown"
        if not self.door.origin_allowed(websocket.headers.get("origin", "")):
            record_refusal(self.metrics, None, "FORBIDDEN_ORIGIN", "origin", address=address)
            await websocket.close(1008)  # before accept: the handshake is answered with HTTP 403
            return
        await websocket.accept()
        connection = Connection(
            id=uuid.uuid4().hex,
            websocket=websocket,
            client_address=address,
            peer=peer_of(websocket),
            limits=self.output,
        )
        connection.peer.on_drop = lambda reason: record_refusal(self.metrics, connection, "DROPPED", reason)
        refusal = self.door.refusal(address, len(self.registry))
        if refusal is not None:
            await refuse(self.metrics, connection, refusal, close=True)
            return
        self.registry.add(connection)
        self.metrics.connections.set(len(self.registry))
        try:
            await Session(self, connection).run()
        except WebSocketDisconnect:
            pass
        except Exception:
            logger.exception("connection %s: unexpected failure", connection.id)
        finally:
            await self._cleanup(connection)

    async def _cleanup(self, connection: Connection) -> None:
        connection.closed = True
        self.tokens.disarm(connection)
        self.registry.remove(connection)
        self.metrics.connections.set(len(self.registry))
        self.metrics.users.set(self.registry.users)
        had_pending = self.inflight.abandon(connection)
        if connection.user_id is not None:
            with contextlib.suppress(Exception):
                await self.admission.release_connection(connection.user_id, connection.id)
        if had_pending:
            await self.broker.publish_control(
                ControlMessage(kind="cancel", connection_id=connection.id, reason="disconnected")
            )
        idle_s = time.monotonic() - connection.last_activity
        logger.debug("connection %s closed after %.1fs idle", connection.id, idle_s)


class Session:
    """The receive loop of one connection, one phase at a time."""

    __slots__ = ("connection", "deadline", "phase", "sessions")

    def __init__(self, sessions: Sessions, connection: Connection) -> None:
        self.sessions = sessions
        self.connection = connection
        self.phase = Phase.AUTHENTICATING
        self.deadline = time.monotonic() + sessions.auth_timeout_s

    async def run(self) -> None:
        door, address = self.sessions.door, self.connection.client_address
        door.wait(address)
        try:
            while self.phase is Phase.AUTHENTICATING:
                await self._authenticating()
        finally:
            door.admitted(address)
        while self.phase is Phase.OPEN and not self.connection.closed:
            await self._open()

    async def _receive(self) -> Message | None:
        """The next message, counted as client activity; None when it ends the connection."""
        message = await self.connection.websocket.receive()
        if message["type"] == "websocket.disconnect":
            self._ended(message)
            return None
        self.connection.touch()
        return message

    def _ended(self, message: Message) -> None:
        """Frames the WebSocket layer refused (over ``WS_MAX_PAYLOAD``, or text that is not UTF-8) are
        counted here; the client has been told already (see ``ws_protocol``)."""
        self.phase = Phase.CLOSED
        code, reason = message.get("code"), message.get("reason")
        if code == 1009 and reason == PAYLOAD_TOO_LARGE_REASON:
            record_refusal(self.sessions.metrics, self.connection, ErrorCode.PAYLOAD_TOO_LARGE.value, "frame_size")
        elif code == 1007 and reason == INVALID_UTF8_REASON:
            record_refusal(self.sessions.metrics, self.connection, ErrorCode.INVALID_MESSAGE.value, "invalid_utf8")

    async def _refuse(self, error: ChatError, request_id: str | int | None = None) -> None:
        """Before authentication every refusal closes."""
        self.phase = Phase.CLOSED
        await refuse(self.sessions.metrics, self.connection, error, request_id, close=True)

    async def _authenticating(self) -> None:
        try:
            async with asyncio.timeout(max(0.0, self.deadline - time.monotonic())):
                message = await self._receive()
        except TimeoutError:
            await self._refuse(
                Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: no join_chat in time", reason="auth_timeout")
            )
            return
        if message is None:
            return
        raw = message.get("text") or message.get("bytes") or b""
        try:
            frame = parse_client_frame(raw)
        except ChatError:
            frame = None
        if not isinstance(frame, JoinChat):
            error = Refusal(
                ErrorCode.UNAUTHORIZED, "Unauthorized: the first frame must be join_chat", reason="first_frame"
            )
            await self._refuse(error, peek_request_id(raw))
            return
        self.sessions.metrics.frames_in.labels("join_chat").inc()
        try:
            await self.sessions.tokens.authenticate(self.connection, frame.data.token)
        except ChatError as error:
            await self._refuse(error, frame.requestId)
            return
        self.phase = Phase.OPEN
        await self.sessions.handler.dispatch(self.connection, frame, verified=True)

    async def _open(self) -> None:
        sessions, connection = self.sessions, self.connection
        message = await self._receive()
        if message is None:
            return
        if sessions.tokens.expired(connection):
            # the expiry timer may not have run yet, or its close may be waiting on the peer:
            # no frame is acted on with an expired token
            self.phase = Phase.CLOSED
            error = Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: token expired", reason="token_expired")
            await refuse(sessions.metrics, connection, error)
            return
        wait_s = connection.take_frame(sessions.max_frames_per_second)
        if wait_s:
            await self._frame_rate_exceeded(wait_s)
            return
        text = message.get("text")
        if text is None:
            error = Refusal(ErrorCode.INVALID_MESSAGE, "Invalid message: binary frame", reason="binary_frame")
            await refuse(sessions.metrics, connection, error)
            return
        try:
            frame = parse_client_frame(text)
        except ChatError as error:
            malformed = Refusal(error.code, error.message, reason="malformed_frame")
            await refuse(sessions.metrics, connection, malformed, peek_request_id(text))
            return
        sessions.metrics.frames_in.labels(frame.type).inc()
        await sessions.handler.dispatch(connection, frame)

    async def _frame_rate_exceeded(self, wait_s: float) -> None:
        """Drop the frame. Every dropped frame is counted; the client is told (and the log told) at most
        once a second, so that a flood does not turn into a flood of answers and log lines."""
        metrics, connection = self.sessions.metrics, self.connection
        now = connection.last_activity
        if now - connection.frame_limit_noticed_at < 1.0:
            metrics.refusals.labels(ErrorCode.RATE_LIMITED.value, "frame_rate").inc()
            return
        connection.frame_limit_noticed_at = now
        rate = self.sessions.max_frames_per_second
        error = Refusal(
            ErrorCode.RATE_LIMITED,
            f"Rate limit exceeded: at most {rate} frames per second; frames are dropped",
            retry_after_ms=max(1, math.ceil(wait_s * 1000)),
            reason="frame_rate",
        )
        await refuse(metrics, connection, error)
