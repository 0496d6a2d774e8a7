"""Reconnect backoff and token handling: small pure pieces the client composes."""

from __future__ import annotations

import base64
import inspect
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

TokenProvider = Callable[[], Awaitable[str] | str]
"""Returns a valid token each time it is called (before expiry and on every reconnect)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` waits ``uniform(0, min(maximum, initial·factorⁿ))``.

    Full jitter spreads a crowd of clients that lost the same gateway over the whole window, so they
    do not come back in one stampede. ``max_attempts`` of ``None`` retries for ever.
    """

    initial: float = 0.5
    maximum: float = 15.0
    factor: float = 2.0
    max_attempts: int | None = None

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return ceiling * rand()


NO_RECONNECT = Backoff(max_attempts=0)


async def get_token(source: str | TokenProvider) -> str:
    if isinstance(source, str):
        return source
    token = source()
    if inspect.isawaitable(token):
        token = await token
    return token


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verifying it; ``None`` if unreadable."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (IndexError, ValueError):
        return None
    return float(exp) if isinstance(exp, int | float) else None


def refresh_delay(seconds_left: float, margin: float) -> float:
    """When to refresh a token with ``seconds_left``: ``margin`` before expiry, at most half-way there."""
    return max(0.5, seconds_left - min(margin, seconds_left / 2))
