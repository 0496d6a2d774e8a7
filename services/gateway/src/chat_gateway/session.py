"""One WebSocket connection from accept to close: authentication, then the frame loop.

Contract: ``serve`` owns the connection. Whatever ends it (client close, error, server shutdown),
the connection leaves the registry, its user slot is released and its in-flight answers are
cancelled before ``serve`` returns. Nothing a client sends raises out of ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from starlette.websockets import WebSocket, WebSocketDisconnect

from chat_common.envelopes import ControlMessage
from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import JoinChat, error_frame, parse_client_frame, peek_request_id
from chat_gateway.connection import Connection
from chat_gateway.handlers import FrameHandler
from chat_gateway.state import GatewayState

logger = logging.getLogger(__name__)


async def serve(state: GatewayState, websocket: WebSocket) -> None:
    settings = state.settings
    if not _origin_allowed(websocket, settings.ws_allowed_origins):
        state.metrics.refusals.labels("ORIGIN").inc()
        await websocket.close(1008)
        return
    await websocket.accept()
    client = websocket.client
    connection = Connection(
        id=uuid.uuid4().hex, websocket=websocket, client_address=client.host if client else "unknown"
    )
    if not state.accepting or len(state.registry) >= settings.ws_max_connections:
        await _refuse(state, connection, ChatError(ErrorCode.SERVER_AT_CAPACITY))
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
    state.metrics.refusals.labels(error.code.value).inc()
    logger.info("connection %s refused: %s (%s)", connection.id, error.code.value, error.message)
    connection.send(error_frame(error, request_id if isinstance(request_id, str | int) else None))
    await connection.close(error.close_code or 1008, error.message[:120])


async def _authenticate(state: GatewayState, connection: Connection, handler: FrameHandler) -> bool:
    """Wait for ``join_chat`` within the auth deadline; on success the connection holds a user slot."""
    websocket = connection.websocket
    try:
        async with asyncio.timeout(state.settings.ws_auth_timeout / 1000):
            message = await websocket.receive()
    except TimeoutError:
        await _refuse(state, connection, ChatError(ErrorCode.UNAUTHORIZED, "Unauthorized: no join_chat in time"))
        return False
    if message["type"] == "websocket.disconnect":
        return False
    raw = message.get("text") or message.get("bytes") or b""
    try:
        frame = parse_client_frame(raw)
    except ChatError:
        frame = None
    if not isinstance(frame, JoinChat):
        error = ChatError(ErrorCode.UNAUTHORIZED, "Unauthorized: the first frame must be join_chat")
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
        if message["type"] == "websocket.disconnect":
            return
        connection.touch()
        text = message.get("text")
        if text is None:
            state.metrics.refusals.labels(ErrorCode.INVALID_MESSAGE.value).inc()
            connection.send(error_frame(ChatError(ErrorCode.INVALID_MESSAGE, "Invalid message: binary frame")))
            continue
        try:
            frame = parse_client_frame(text)
        except ChatError as error:
            state.metrics.refusals.labels(error.code.value).inc()
            connection.send(error_frame(error, peek_request_id(text)))
            continue
        state.metrics.frames_in.labels(frame.type).inc()
        await handler.dispatch(frame)


async def _cleanup(state: GatewayState, connection: Connection) -> None:
    connection.closed = True
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
