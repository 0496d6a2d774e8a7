"""Per-user connection slots and message rate limits.

``AdmissionStore`` is the seam: ``LocalAdmission`` holds the state in this process; a shared
implementation (Redis) makes the same limits hold across gateways.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from typing import Protocol

BUDGET_WINDOW_MS = 60_000
"""the window of the per-minute budgets (chat creation, history reads)."""


class AdmissionStore(Protocol):
    async def acquire_connection(self, user_id: str, connection_id: str, limit: int) -> bool:
        """Take one of the user's ``limit`` connection slots; ``False`` when all are taken."""
        ...

    async def release_connection(self, user_id: str, connection_id: str) -> None:
        """Give the slot back; releasing twice is harmless."""
        ...

    async def hit_rate(self, user_id: str, limit: int, window_ms: int, *, bucket: str = "messages") -> int | None:
        """Count one ``bucket`` action of the user (``messages``, ``chats``, ``history``); ``None``
        if allowed, else the ms until the next one would be."""
        ...

    async def close(self) -> None: ...


class LocalAdmission:
    """In-process state: exact sliding-window log, slots per user."""

    def __init__(self) -> None:
        self._slots: dict[str, set[str]] = defaultdict(set)
        self._hits: dict[tuple[str, str], deque[float]] = {}

    async def acquire_connection(self, user_id: str, connection_id: str, limit: int) -> bool:
        slots = self._slots[user_id]
        if connection_id in slots:
            return True
        if len(slots) >= limit:
            return False
        slots.add(connection_id)
        return True

    async def release_connection(self, user_id: str, connection_id: str) -> None:
        slots = self._slots.get(user_id)
        if slots is not None:
            slots.discard(connection_id)
            if not slots:
                del self._slots[user_id]

    async def hit_rate(self, user_id: str, limit: int, window_ms: int, *, bucket: str = "messages") -> int | None:
        now = time.monotonic()
        window = window_ms / 1000
        hits = self._hits.get((bucket, user_id))
        if hits is None:
            hits = self._hits[(bucket, user_id)] = deque()
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            # the message that frees a place is the one ``limit`` places before the end
            freeing = hits[len(hits) - limit]
            return max(1, math.ceil((freeing + window - now) * 1000))
        hits.append(now)
        return None

    def forget_idle(self, window_ms: int) -> None:
        """Drop the rate logs with no hit inside the window (called by the cleanup sweep)."""
        oldest = time.monotonic() - max(window_ms, BUDGET_WINDOW_MS) / 1000
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= oldest]:
            del self._hits[key]

    async def close(self) -> None:
        return None
