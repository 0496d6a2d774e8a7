"""The periodic sweep: close connections idle longer than ``WS_INACTIVE_TIMEOUT``.

Token expiry is not the sweep's business: each connection has its own timer (``FrameHandler``),
so an expired token is acted on at its expiry, not up to ``WS_CLEANUP_INTERVAL`` later.
"""

from __future__ import annotations

import asyncio
import logging
import time

from chat_gateway.admission import LocalAdmission
from chat_gateway.state import GatewayState

logger = logging.getLogger(__name__)


async def sweep_once(state: GatewayState) -> int:
    """Close every connection without client activity for ``WS_INACTIVE_TIMEOUT``; return how many."""
    idle_before = time.monotonic() - state.settings.ws_inactive_timeout / 1000
    idle = [c for c in state.registry if not c.closed and c.last_activity < idle_before]
    for connection in idle:
        logger.info("connection %s closed: inactive (user=%s)", connection.id, connection.user_id or "-")
    # closed together: one slow peer must not hold up the sweep for the others
    await asyncio.gather(*(connection.close(1000, "inactive") for connection in idle))
    if isinstance(state.admission, LocalAdmission):
        state.admission.forget_idle(state.settings.ws_rate_limit_window)
    return len(idle)


async def sweep_forever(state: GatewayState) -> None:
    interval = state.settings.ws_cleanup_interval / 1000
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(state)
        except Exception:
            logger.exception("sweep failed")
