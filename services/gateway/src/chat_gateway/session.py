"""One WebSocket connection from accept to close: authentication, then the frame loop.

Contract: ``serve`` owns the connection. Whatever ends it (client close, error, server shutdown),
the connection leaves the registry, its user slot is released and its in-flight answers are
cancelled before ``serve`` returns. Nothing a client sends raises out of ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from chat_common.envelopes import ControlMessage
from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import JoinChat, error_frame, parse_client_frame, peek_request_id
from chat_gateway.connection import Connection, peer_of
from chat_gateway.handlers import FrameHandler
from chat_gateway.refusals import Refusal, reason_of, record_refusal
from chat_gateway.state import GatewayState
from chat_gateway.ws_protocol import INVALID_UTF8_REASON, PAYLOAD_TOO_LARGE_REASON

logger = logging.getLogger(__name__)


async def serve(state: GatewayState, websocket: WebSocket) -> None:
    settings = state.settings
    client = websocket.client
    address = client.host if client else "unknown"
    if not _origin_allowed(websocket, settings.ws_allowed_origins):
        record_refusal(state.metrics, None, "FORBIDDEN_ORIGIN", "origin", address=address)
        await websocket.close(1008)  # before accept: the handshake is answered with HTTP 403
        return
    await websocket.accept()
    connection = Connection(
        id=uuid.uuid4().hex,
        websocket=websocket,
        client_address=address,
        peer=peer_of(websocket),
        limits=state.output_limits,
    )
    connection.peer.on_drop = lambda reason: record_refusal(state.metrics, connection, "DROPPED", reason)
    if not state.accepting or len(state.registry) >= settings.ws_max_connections:
        reason = "capacity" if state.accepting else "shutting_down"
        await _refuse(state, connection, Refusal(ErrorCode.SERVER_AT_CAPACITY, reason=reason))
        return
    if state.unauthenticated[address] >= settings.ws_max_unauthenticated_per_address:
        error = Refusal(
            ErrorCode.TOO_MANY_CONNECTIONS,
            "Too many connections from this address waiting to authenticate",
            reason="per_address",
        )
        await _refuse(state, connection, error)
        return
    if state.unauthenticated_total >= settings.max_unauthenticated:
        # behind IPv6 or a botnet the per-address cap does nothing: this keeps most of the capacity
        # for clients that authenticate
        await _refuse(state, connection, Refusal(ErrorCode.SERVER_AT_CAPACITY, reason="unauthenticated"))
        return
    state.registry.add(connection)
    state.metrics.connections.set(len(state.registry))
    handler = FrameHandler(state, connection)
    try:
        if await _authenticate(state, connection, handler):
            await _frame_loop(state, connection, handler)
    except WebSocketDisconnect:
        pass
    except Exception:
        logger.exception("connection %s: unexpected failure", connection.id)
    finally:
        await _cleanup(state, connection)


def _origin_allowed(websocket: WebSocket, allowed: list[str]) -> bool:
    if not allowed:
        return True
    return websocket.headers.get("origin", "") in allowed


async def _refuse(state: GatewayState, connection: Connection, error: ChatError, request_id: object = None) -> None:
    """Refuse a connection that is not (yet) served by a ``FrameHandler``: error frame, then close."""
    record_refusal(state.metrics, connection, error.code.value, reason_of(error))
    connection.send(error_frame(error, request_id if isinstance(request_id, str | int) else None))
    await connection.close(error.close_code or 1008, error.message[:120])


def _ended(state: GatewayState, connection: Connection, message: Message) -> bool:
    """Whether ``message`` ends the connection. Frames the WebSocket layer refused (over
    ``WS_MAX_PAYLOAD``, or text that is not UTF-8) are counted here; the client has been told
    already (see ``ws_protocol``)."""
    if message["type"] != "websocket.disconnect":
        return False
    code, reason = message.get("code"), message.get("reason")
    if code == 1009 and reason == PAYLOAD_TOO_LARGE_REASON:
        record_refusal(state.metrics, connection, ErrorCode.PAYLOAD_TOO_LARGE.value, "frame_size")
    elif code == 1007 and reason == INVALID_UTF8_REASON:
        record_refusal(state.metrics, connection, ErrorCode.INVALID_MESSAGE.value, "invalid_utf8")
    return True


async def _authenticate(state: GatewayState, connection: Connection, handler: FrameHandler) -> bool:
    """Wait for ``join_chat`` within the auth deadline; on success the connection holds a user slot.

    While it waits, the socket counts against its address's ``WS_MAX_UNAUTHENTICATED_PER_ADDRESS``.
    """
    address = connection.client_address
    state.unauthenticated[address] += 1
    state.unauthenticated_total += 1
    try:
        return await _wait_for_join(state, connection, handler)
    finally:
        state.unauthenticated_total -= 1
        state.unauthenticated[address] -= 1
        if state.unauthenticated[address] <= 0:
            del state.unauthenticated[address]


async def _wait_for_join(state: GatewayState, connection: Connection, handler: FrameHandler) -> bool:
    websocket = connection.websocket
    try:
        async with asyncio.timeout(state.settings.ws_auth_timeout / 1000):
            message = await websocket.receive()
    except TimeoutError:
        error = Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: no join_chat in time", reason="auth_timeout")
        await _refuse(state, connection, error)
        return False
    if _ended(state, connection, message):
        return False
    connection.touch()
    raw = message.get("text") or message.get("bytes") or b""
    try:
        frame = parse_client_frame(raw)
    except ChatError:
        frame = None
    if not isinstance(frame, JoinChat):
        error = Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: the first frame must be join_chat", reason="first_frame")
        await _refuse(state, connection, error, peek_request_id(raw))
        return False
    state.metrics.frames_in.labels("join_chat").inc()
    try:
        await handler.authenticate(frame)
    except ChatError as error:
        await _refuse(state, connection, error, frame.requestId)
        return False
    await handler.dispatch(frame)
    return True


async def _frame_loop(state: GatewayState, connection: Connection, handler: FrameHandler) -> None:
    websocket = connection.websocket
    while not connection.closed:
        message = await websocket.receive()
        if _ended(state, connection, message):
            return
        connection.touch()
        if _token_expired(state, connection):
            # the expiry timer may not have run yet, or its close may be waiting on the peer:
            # no frame is acted on with an expired token
            error = Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: token expired", reason="token_expired")
            await handler.reject(error)
            return
        wait_s = connection.take_frame(state.settings.ws_max_frames_per_second)
        if wait_s:
            _frame_rate_exceeded(state, connection, wait_s)
            continue
        text = message.get("text")
        if text is None:
            error = Refusal(ErrorCode.INVALID_MESSAGE, "Invalid message: binary frame", reason="binary_frame")
            await handler.reject(error)
            continue
        try:
            frame = parse_client_frame(text)
        except ChatError as error:
            await handler.reject(Refusal(error.code, error.message, reason="malformed_frame"), peek_request_id(text))
            continue
        state.metrics.frames_in.labels(frame.type).inc()
        await handler.dispatch(frame)


def _token_expired(state: GatewayState, connection: Connection) -> bool:
    return time.time() > connection.token_expires_at + state.settings.jwt_leeway


def _frame_rate_exceeded(state: GatewayState, connection: Connection, wait_s: float) -> None:
    """Drop the frame. Every dropped frame is counted; the client is told (and the log told) at most
    once a second, so that a flood does not turn into a flood of answers and log lines."""
    state.metrics.refusals.labels(ErrorCode.RATE_LIMITED.value, "frame_rate").inc()
    now = connection.last_activity
    if now - connection.frame_limit_noticed_at < 1.0:
        return
    connection.frame_limit_noticed_at = now
    logger.info(
        "connection %s refused: RATE_LIMITED (frame_rate) user=%s address=%s; frames dropped for up to 1 s",
        connection.id,
        connection.user_id or "-",
        connection.client_address,
    )
    rate = state.settings.ws_max_frames_per_second
    error = ChatError(
        ErrorCode.RATE_LIMITED,
        f"Rate limit exceeded: at most {rate} frames per second; frames are dropped",
        retry_after_ms=max(1, math.ceil(wait_s * 1000)),
    )
    state.metrics.errors.labels(error.code.value).inc()
    connection.send(error_frame(error))


async def _cleanup(state: GatewayState, connection: Connection) -> None:
    connection.closed = True
    if connection.expiry_timer is not None:
        connection.expiry_timer.cancel()
        connection.expiry_timer = None
    state.registry.remove(connection)
    state.metrics.connections.set(len(state.registry))
    state.metrics.users.set(state.registry.users)
    had_pending = bool(connection.pending or connection.resumes)
    for pending in [*connection.pending.values(), *connection.resumes.values()]:
        state.router.finish(connection, pending, error_code=None, record=False)
    if connection.user_id is not None:
        with contextlib.suppress(Exception):
            await state.admission.release_connection(connection.user_id, connection.id)
    if had_pending:
        await state.broker.publish_control(
            ControlMessage(kind="cancel", connection_id=connection.id, reason="disconnected")
        )
    logger.debug("connection %s closed after %.1fs idle", connection.id, time.monotonic() - connection.last_activity)
