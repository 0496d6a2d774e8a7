"""A connection's identity over time: the token verified once per frame that carries one, the user slot, the expiry.

Contract: ``authenticate`` is the only way a connection gets a ``user_id`` (and holds one of the
user's ``WS_MAX_CONNECTIONS_PER_USER`` slots from then on; the session releases it). Every later
token (``refresh_token``, a second ``join_chat``) must be the same user's and re-arms the expiry.
Each connection has one expiry timer (a heap entry, no task): at expiry plus ``JWT_LEEWAY`` the
connection is refused with ``UNAUTHORIZED``; far-off expiries are checked again every
``_MAX_TIMER_S`` rather than scheduled at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from chat_common.errors import ErrorCode
from chat_gateway.admission import AdmissionStore
from chat_gateway.auth import Identity, TokenVerifier
from chat_gateway.connection import Connection
from chat_gateway.metrics import GatewayMetrics
from chat_gateway.refusals import Refusal, refuse
from chat_gateway.registry import ConnectionRegistry

_MAX_TIMER_S = 3600.0


@dataclass(slots=True)
class TokenKeeper:
    verifier: TokenVerifier
    admission: AdmissionStore
    registry: ConnectionRegistry
    metrics: GatewayMetrics
    leeway_s: float
    max_connections_per_user: int
    _closing: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    """refusals started by an expiry timer, each bounded by ``WS_SEND_TIMEOUT``."""

    async def authenticate(self, connection: Connection, token: str) -> Identity:
        """Verify the first token and take a user slot; a ``ChatError`` here closes the connection."""
        identity = await self.verifier.verify(token)
        if not await self.admission.acquire_connection(identity.user_id, connection.id, self.max_connections_per_user):
            raise Refusal(ErrorCode.TOO_MANY_CONNECTIONS, reason="per_user")
        connection.user_id = identity.user_id
        self.registry.bind_user(connection)
        self.metrics.users.set(self.registry.users)
        self._arm(connection, identity)
        return identity

    async def renew(self, connection: Connection, token: str) -> Identity:
        """A later token of the connection's user: verified (a cache hit when it is the same token)
        and the expiry moved to its own."""
        identity = await self.verifier.verify(token)
        if identity.user_id != connection.user_id:
            raise Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: token is for another user", reason="other_user")
        self._arm(connection, identity)
        return identity

    def expired(self, connection: Connection) -> bool:
        """Whether the token is past its expiry (the timer may not have run yet)."""
        return time.time() > connection.token_expires_at + self.leeway_s

    def disarm(self, connection: Connection) -> None:
        if connection.expiry_timer is not None:
            connection.expiry_timer.cancel()
            connection.expiry_timer = None

    def _arm(self, connection: Connection, identity: Identity) -> None:
        connection.token_expires_at = identity.expires_at
        self.disarm(connection)
        self._check_later(connection, identity.expires_at + self.leeway_s - time.time())

    def _check_later(self, connection: Connection, delay_s: float) -> None:
        delay = min(max(0.0, delay_s), _MAX_TIMER_S)
        connection.expiry_timer = asyncio.get_running_loop().call_later(delay, self._check, connection)

    def _check(self, connection: Connection) -> None:
        connection.expiry_timer = None
        if connection.closed:
            return
        remaining = connection.token_expires_at + self.leeway_s - time.time()
        if remaining > 0:
            self._check_later(connection, remaining)
            return
        error = Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: token expired", reason="token_expired")
        task = asyncio.get_running_loop().create_task(refuse(self.metrics, connection, error))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
