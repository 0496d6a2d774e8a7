"""The periodic sweep: close connections idle longer than ``WS_INACTIVE_TIMEOUT``.

Token expiry is not the sweep's business: each connection has its own timer (``FrameHandler``),
so an expired token is acted on at its expiry, not up to ``WS_CLEANUP_INTERVAL`` later.

Contract: a sweep never waits on a peer. Each close it starts is a task of its own, owned by
``state.closing``, bounded by ``WS_SEND_TIMEOUT`` (then the peer is dropped); a peer that does not
read delays neither the other closes nor the next sweep, which runs on a fixed schedule.
"""

from __future__ import annotations

import asyncio
import logging
import time

from chat_gateway.admission import LocalAdmission
from chat_gateway.connection import Connection
from chat_gateway.state import GatewayState

logger = logging.getLogger(__name__)


def sweep_once(state: GatewayState) -> int:
    """Start closing every connection without client activity for ``WS_INACTIVE_TIMEOUT``; return how many."""
    idle_before = time.monotonic() - state.settings.ws_inactive_timeout_s
    idle = [c for c in state.registry if not c.closed and c.last_activity < idle_before]
    for connection in idle:
        logger.info("connection %s closed: inactive (user=%s)", connection.id, connection.user_id or "-")
        close_in_background(state, connection, 1000, "inactive")
    if isinstance(state.admission, LocalAdmission):
        state.admission.forget_idle(state.settings.ws_rate_limit_window)
    state.metrics.sweeps.inc()
    return len(idle)


def close_in_background(state: GatewayState, connection: Connection, code: int, reason: str) -> None:
    """Close ``connection`` in a task owned by ``state.closing`` (bounded by ``WS_SEND_TIMEOUT``)."""
    connection.closed = True  # no frame is handled from now on
    task = asyncio.get_running_loop().create_task(connection.close(code, reason))
    state.closing.add(task)
    task.add_done_callback(state.closing.discard)


async def sweep_forever(state: GatewayState) -> None:
    interval = state.settings.ws_cleanup_interval_s
    loop = asyncio.get_running_loop()
    due = loop.time() + interval
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        state.metrics.sweep_lag.set(max(0.0, loop.time() - due))
        due = max(due + interval, loop.time())  # after a stall: the next sweep, not a burst
        try:
            sweep_once(state)
        except Exception:
            logger.exception("sweep failed")
