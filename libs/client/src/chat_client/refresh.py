"""The token's renewal: the provider's next token sent ``refresh_margin`` s before ``exp`` (at most half-way).

A fixed token (a string) is never renewed: the gateway closes the connection at its expiry, and
the reconnect fails with ``Unauthorized``. A failed refresh is logged and left to the reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from chat_client.errors import ChatClientError
from chat_client.policy import TokenProvider, refresh_delay, token_expiry

logger = logging.getLogger("chat_client")


@dataclass(slots=True)
class TokenRefresh:
    source: str | TokenProvider
    refresh: Callable[[], Awaitable[float]]
    spawn: Callable[[Coroutine[Any, Any, None]], None]
    margin: float
    expires_at: float | None = None
    closed: bool = False
    _timer: asyncio.TimerHandle | None = None

    def schedule(self, token: str, expires_at: float | None) -> None:
        """``token`` is in use now (expiring at ``expires_at``, else at its own ``exp``)."""
        self.cancel()
        expires = expires_at if expires_at is not None else token_expiry(token)
        self.expires_at = expires
        if expires is None or isinstance(self.source, str) or self.closed:
            return
        delay = refresh_delay(expires - time.time(), self.margin)
        self._timer = asyncio.get_running_loop().call_later(delay, self._due)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.closed = True
        self.cancel()

    def _due(self) -> None:
        self._timer = None
        self.spawn(self._quietly())

    async def _quietly(self) -> None:
        try:
            await self.refresh()
        except (ChatClientError, TimeoutError) as exc:
            # the gateway closes the connection when the token expires; the reconnect takes a new one
            logger.warning("token refresh failed: %s", exc)
