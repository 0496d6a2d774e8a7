"""Questions whose request never reached a worker (the gateway died between storing and publishing): ``TIMEOUT``.

Each worker runs the reaper; the store's update is idempotent, so several reaping at once is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from chat_common.store import UNAVAILABLE_ERRORS, ChatStore

logger = logging.getLogger(__name__)

REAP_MARGIN_S = 15.0
"""seconds past a request's deadline before a question without an answer counts as lost."""


def reap_interval(request_timeout_s: float) -> float:
    return min(max(request_timeout_s / 2, 5.0), 60.0)


async def reap_once(store: ChatStore, *, request_timeout_s: float) -> int:
    """Record the questions lost for good as ``TIMEOUT``; how many (0 while PostgreSQL is away)."""
    try:
        reaped = await store.fail_stale_requests(older_than_s=request_timeout_s + REAP_MARGIN_S)
    except UNAVAILABLE_ERRORS:
        return 0
    if reaped:
        logger.warning("%d questions without a request past their deadline recorded as TIMEOUT", reaped)
    return reaped


async def reap_forever(
    store: ChatStore, *, request_timeout_s: float, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
) -> None:
    """Reap every ``reap_interval`` until cancelled; a failed round is logged and the next one tries again
    (the reaper shares the worker's task group: its failure must not stop the worker)."""
    while True:
        await sleep(reap_interval(request_timeout_s))
        try:
            await reap_once(store, request_timeout_s=request_timeout_s)
        except Exception:
            logger.exception("reaping lost questions failed; trying again in %.0fs", reap_interval(request_timeout_s))
