"""The periodic sweep: close connections idle longer than ``WS_INACTIVE_TIMEOUT``."""

from __future__ import annotations

import asyncio
import logging
import time

from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import error_frame
from chat_gateway.admission import LocalAdmission
from chat_gateway.state import GatewayState

logger = logging.getLogger(__name__)


async def sweep_once(state: GatewayState) -> int:
    """Close every inactive connection and every one whose token expired; return how many."""
    settings = state.settings
    idle_before = time.monotonic() - settings.ws_inactive_timeout / 1000
    now = time.time()
    closed = 0
    for connection in state.registry:
        if connection.closed:
            continue
        if connection.last_activity < idle_before:
            logger.info("connection %s closed: inactive", connection.id)
            await connection.close(1000, "inactive")
            closed += 1
        elif connection.user_id is not None and connection.token_expires_at + settings.jwt_leeway < now:
            connection.send(error_frame(ChatError(ErrorCode.UNAUTHORIZED, "Unauthorized: token expired")))
            await connection.close(1008, "token expired")
            closed += 1
    if isinstance(state.admission, LocalAdmission):
        state.admission.forget_idle()
    return closed


async def sweep_forever(state: GatewayState) -> None:
    interval = state.settings.ws_cleanup_interval / 1000
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(state)
        except Exception:
            logger.exception("sweep failed")
