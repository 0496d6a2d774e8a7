"""Cluster-wide admission state in Redis (``REDIS_URL``).

Connection slots are members of a sorted set per user, scored by their expiry; every gateway
refreshes its own slots every ``SLOT_TTL_MS / 3``, so the slots of a gateway that dies expire by
themselves and nobody stays locked out. Rate limits are a sliding-window log per user. Both are
single Lua scripts, atomic across gateways, timed by the Redis server's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable

import redis.asyncio as redis

from chat_common.settings import Settings

logger = logging.getLogger(__name__)

SLOT_TTL_MS = 30_000

_NOW = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

_REFRESH = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

_HIT = (
    _NOW
    + """
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return -1
"""
)


def _slots_key(user_id: str) -> str:
    return f"chat:slots:{{{user_id}}}"


def _rate_key(user_id: str) -> str:
    return f"chat:rate:{{{user_id}}}"


class RedisAdmission:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)
        self._hit = client.register_script(_HIT)
        self._held: dict[str, str] = {}
        """connection id -> user id, the slots this process keeps alive."""
        self._keeper: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, settings: Settings) -> RedisAdmission:
        client = redis.Redis.from_url(settings.redis_url or "", socket_timeout=2, socket_connect_timeout=2)
        await client.ping()
        admission = cls(client)
        admission._keeper = asyncio.get_running_loop().create_task(admission._keep_alive())
        return admission

    async def acquire_connection(self, user_id: str, connection_id: str, limit: int) -> bool:
        granted = await self._acquire(keys=[_slots_key(user_id)], args=[connection_id, limit, SLOT_TTL_MS])
        if granted:
            self._held[connection_id] = user_id
        return bool(granted)

    async def release_connection(self, user_id: str, connection_id: str) -> None:
        self._held.pop(connection_id, None)
        await self._client.zrem(_slots_key(user_id), connection_id)

    async def hit_rate(self, user_id: str, limit: int, window_ms: int) -> int | None:
        wait = int(await self._hit(keys=[_rate_key(user_id)], args=[limit, window_ms, uuid.uuid4().hex]))
        return None if wait < 0 else wait

    async def refresh(self, held: Iterable[tuple[str, str]]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for connection_id, user_id in held:
                await self._refresh(keys=[_slots_key(user_id)], args=[connection_id, SLOT_TTL_MS], client=pipe)
            await pipe.execute()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(SLOT_TTL_MS / 3000)
            try:
                await self.refresh(list(self._held.items()))
            except Exception:  # noqa: BLE001 - Redis away: slots expire, retried next round
                logger.warning("could not refresh connection slots in Redis")

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        held = list(self._held.items())
        with contextlib.suppress(Exception):
            async with self._client.pipeline(transaction=False) as pipe:
                for connection_id, user_id in held:
                    pipe.zrem(_slots_key(user_id), connection_id)
                await pipe.execute()
        await self._client.aclose()
