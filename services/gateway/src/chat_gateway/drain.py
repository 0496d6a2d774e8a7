"""Graceful shutdown of a gateway: stop accepting, let answers finish, close clients with 1012, spread out.

``GatewayServer`` runs this before uvicorn's own shutdown, which would close every WebSocket at once
(and cut the answers streaming on them). Contract of ``drain``: when it returns, every connection it
found has been sent close code 1012 ("service restart": reconnect, elsewhere), idle ones at random
moments over ``SHUTDOWN_SPREAD`` so that clients do not reconnect in one stampede, busy ones as
soon as their answers end or ``SHUTDOWN_GRACE`` runs out (then the worker keeps the answer for a
resume on the connection the client opens next, within ``RESUME_GRACE``). Each close is bounded
(``CLOSE_AFTER_GRACE_S`` past the grace at most, then the peer is dropped), so a peer that does not
read cannot hold up the drain: it returns within ``SHUTDOWN_GRACE`` + ``CLOSE_AFTER_GRACE_S``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time

import uvicorn

from chat_gateway.connection import Connection
from chat_gateway.state import GatewayState

logger = logging.getLogger(__name__)

SERVICE_RESTART = 1012
CLOSE_AFTER_GRACE_S = 2.0
"""the most a close may take once the grace is over (writing what is queued, then the close frame)."""


async def drain(state: GatewayState, *, grace_s: float, spread_s: float) -> None:
    state.door.accepting = False
    connections = [c for c in state.registry if not c.closed]
    if not connections:
        return
    busy = sum(1 for c in connections if _busy(c))
    logger.info(
        "draining %d connections (%d with answers in flight) over %.1fs, grace %.1fs",
        len(connections),
        busy,
        spread_s,
        grace_s,
    )
    deadline = time.monotonic() + grace_s
    rng = random.Random()  # noqa: S311 - spreading reconnects, not security
    await asyncio.gather(*(_close_later(c, rng.uniform(0, spread_s), deadline) for c in connections))


async def _close_later(connection: Connection, delay_s: float, deadline: float) -> None:
    await asyncio.sleep(delay_s)
    # a short poll: answers end by replies from the broker, not by one event this could wait on
    while _busy(connection) and not connection.closed and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if not connection.closed:
        # from here no new frame is handled (``FrameHandler.dispatch`` drops it), so nothing can be
        # stored for a client that is about to be told to go elsewhere
        connection.closed = True
        limit = min(connection.limits.send_timeout_s, max(0.0, deadline - time.monotonic()) + CLOSE_AFTER_GRACE_S)
        await connection.close(SERVICE_RESTART, "service restart", timeout_s=limit)


def _busy(connection: Connection) -> bool:
    return bool(connection.pending or connection.resumes or connection.dispatching)


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the gateway's drain run first on SIGTERM/SIGINT."""

    def __init__(self, config: uvicorn.Config, *, grace_s: float, spread_s: float) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.spread_s = spread_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting first: a load balancer moves new clients elsewhere
        state: GatewayState | None = getattr(getattr(self.config.loaded_app, "state", None), "gateway", None)
        if state is None:
            app = getattr(self.config, "app", None)
            state = getattr(getattr(app, "state", None), "gateway", None)
        if state is not None and not self.force_exit:
            try:
                await drain(state, grace_s=self.grace_s, spread_s=self.spread_s)
            except Exception:
                logger.exception("drain failed; closing the remaining connections at once")
        await super().shutdown(sockets)
