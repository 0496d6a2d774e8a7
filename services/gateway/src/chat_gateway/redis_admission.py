"""Cluster-wide admission state in Redis (``REDIS_URL``).

Connection slots are members of a sorted set per user, scored by their expiry; every gateway
refreshes its own slots every ``REDIS_SLOT_TTL / 3``, so the slots of a gateway that dies (SIGKILL,
power loss) expire by themselves within ``REDIS_SLOT_TTL`` and nobody stays locked out. Rate limits
are a sliding-window log per user (one member per accepted message, scored by its time). Each
operation is one Lua script, atomic across gateways and timed by the Redis server's clock, so the
gateways' clocks need not agree.

If Redis cannot be reached, the limits fall back to this process's own (``LocalAdmission``) until
it answers again: users are still limited, per gateway, rather than refused or unlimited. When it
answers again, every live connection of this process is registered again (``_REGISTER``: the ones
admitted during the outage, and the ones whose slots expired or were lost with a restarted Redis),
at once, so the cluster-wide count is whole again within one keep-alive round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.exceptions import RedisError

from chat_common.settings import GatewaySettings
from chat_gateway.admission import LocalAdmission

logger = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 2.0
"""after a failed call, Redis is left alone this long (the local limits apply meanwhile)."""

_NOW = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS[1] slots of the user; ARGV: connection id, limit, ttl ms. 1 = granted.
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

# KEYS[1] slots of the user; ARGV: connection id, ttl ms. Extends a slot that still exists (XX):
# a slot released meanwhile is not brought back.
_REFRESH = (
    _NOW
    + """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""
)

# KEYS[1] slots of the user; ARGV: connection id, ttl ms. Re-registers a live connection whatever
# the count: it is open already, and refusing it here would not close it.
_REGISTER = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS[1] the cluster's users; ARGV: user id, ttl ms. The user has a slot until at least now + ttl.
_SEEN = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS[1] slots of the user; ARGV: connection id. The slots left (0: the user has none anywhere).
_RELEASE = (
    _NOW
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS[1] the cluster's users. How many have a slot that has not expired.
_COUNT_USERS = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS[1] message log of the user; ARGV: limit, window ms, unique member. -1 = allowed (and
# counted), else the ms until the message that frees a place leaves the window.
_HIT = (
    _NOW
    + """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local freeing = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  return math.max(1, tonumber(freeing[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return -1
"""
)


def _slots_key(user_id: str) -> str:
    return f"chat:slots:{{{user_id}}}"


USERS_KEY = "chat:users"
"""every user with a connection slot, scored by when the latest of them expires: the cluster's
distinct users (one key, so each script touches one key and Redis Cluster can hold these too)."""


def _rate_key(user_id: str, bucket: str = "messages") -> str:
    if bucket == "messages":
        return f"chat:rate:{{{user_id}}}"  # the name it had before there were other buckets
    return f"chat:rate:{bucket}:{{{user_id}}}"


class RedisAdmission:
    """``AdmissionStore`` shared by all gateways through one Redis.

    Owns its Redis client and the task that keeps this process's slots alive; ``close`` stops the
    task, gives the slots back and closes the client.
    """

    def __init__(self, client: redis.Redis, *, slot_ttl_ms: int) -> None:
        self._client = client
        self._slot_ttl_ms = slot_ttl_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)
        self._register = client.register_script(_REGISTER)
        self._seen = client.register_script(_SEEN)
        self._release = client.register_script(_RELEASE)
        self._count_users = client.register_script(_COUNT_USERS)
        self._hit = client.register_script(_HIT)
        self.cluster_users: int | None = None
        """distinct users connected anywhere, counted at the last keep-alive round; ``None`` while
        Redis is away (or before the first round)."""
        self._held: dict[str, str] = {}
        """connection id -> user id: every connection this process admitted (through Redis or not);
        their slots are kept alive in Redis."""
        self._by_user: dict[str, set[str]] = {}
        """user id -> the connection ids of ``_held``: the per-user limit while Redis is away."""
        self._stale = False
        """some of ``_held`` may be missing in Redis (a call failed): register them all again."""
        self._wake = asyncio.Event()
        self._local = LocalAdmission()
        """the rate limits while Redis is away."""
        self._retry_at = 0.0
        self._keeper: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, settings: GatewaySettings) -> RedisAdmission:
        # A join or a message waits for these calls: fail fast (one quick retry for a blip), and let
        # the local limits and the back-off of RETRY_AFTER_FAILURE_S carry an outage.
        client = redis.Redis.from_url(
            str(settings.redis_url or ""),
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(ConstantBackoff(0.05), 1),
        )
        admission = cls(client, slot_ttl_ms=settings.redis_slot_ttl)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            admission._failed("start-up", exc)
        admission._keeper = asyncio.get_running_loop().create_task(admission._keep_alive())
        return admission

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and the limits are this process's own."""
        return self._retry_at > 0.0

    def _usable(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _failed(self, what: str, exc: BaseException) -> None:
        self._stale = True
        self.cluster_users = None
        if not self.degraded:
            logger.warning(
                "Redis unreachable (%s: %r): connection and rate limits are per gateway until it is back", what, exc
            )
        self._retry_at = time.monotonic() + RETRY_AFTER_FAILURE_S

    def _recovered(self) -> None:
        if self.degraded:
            logger.info("Redis reachable again: connection and rate limits are cluster-wide")
            self._retry_at = 0.0
        if self._stale:
            self._wake.set()  # the keeper registers the live connections now, not in a third of a TTL

    async def acquire_connection(self, user_id: str, connection_id: str, limit: int) -> bool:
        if self._usable():
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    await self._acquire(
                        keys=[_slots_key(user_id)], args=[connection_id, limit, self._slot_ttl_ms], client=pipe
                    )
                    # granted or not, the user holds a live slot: count them among the cluster's users
                    await self._seen(keys=[USERS_KEY], args=[user_id, self._slot_ttl_ms], client=pipe)
                    granted, _ = await pipe.execute()
            except (RedisError, OSError) as exc:
                self._failed("acquire", exc)
            else:
                self._recovered()
                if granted:
                    self._hold(user_id, connection_id)
                return bool(granted)
        # Redis is away: this process's own connections of the user count, wherever they came from
        mine = self._by_user.get(user_id, ())
        if connection_id not in mine and len(mine) >= limit:
            return False
        self._hold(user_id, connection_id)  # registered in Redis when it is back
        return True

    def _hold(self, user_id: str, connection_id: str) -> None:
        self._held[connection_id] = user_id
        self._by_user.setdefault(user_id, set()).add(connection_id)

    def _unhold(self, user_id: str, connection_id: str) -> bool:
        if self._held.pop(connection_id, None) is None:
            return False
        mine = self._by_user.get(user_id)
        if mine is not None:
            mine.discard(connection_id)
            if not mine:
                del self._by_user[user_id]
        return True

    async def release_connection(self, user_id: str, connection_id: str) -> None:
        if not self._unhold(user_id, connection_id):
            return
        if not self._usable():
            return  # not in Redis, or expires there by itself within the TTL
        try:
            if not await self._release(keys=[_slots_key(user_id)], args=[connection_id]):
                await self._client.zrem(USERS_KEY, user_id)
        except (RedisError, OSError) as exc:
            self._failed("release", exc)  # the slot expires by itself within the TTL

    async def hit_rate(self, user_id: str, limit: int, window_ms: int, *, bucket: str = "messages") -> int | None:
        if self._usable():
            try:
                key = _rate_key(user_id, bucket)
                wait = int(await self._hit(keys=[key], args=[limit, window_ms, uuid.uuid4().hex]))
            except (RedisError, OSError) as exc:
                self._failed("rate limit", exc)
            else:
                self._recovered()
                return None if wait < 0 else wait
        return await self._local.hit_rate(user_id, limit, window_ms, bucket=bucket)

    async def refresh(self, held: Iterable[tuple[str, str]]) -> None:
        """Extend the given slots (connection id, user id) to a full TTL from now, and count the
        cluster's users (``cluster_users``)."""
        async with self._client.pipeline(transaction=False) as pipe:
            users = set()
            for connection_id, user_id in held:
                await self._refresh(keys=[_slots_key(user_id)], args=[connection_id, self._slot_ttl_ms], client=pipe)
                users.add(user_id)
            for user_id in users:
                await self._seen(keys=[USERS_KEY], args=[user_id, self._slot_ttl_ms], client=pipe)
            await self._count_users(keys=[USERS_KEY], client=pipe)
            results = await pipe.execute()
        self.cluster_users = int(results[-1])

    async def register_all(self) -> int:
        """Register every live connection's slot again (after an outage); returns how many."""
        held = list(self._held.items())
        async with self._client.pipeline(transaction=False) as pipe:
            for connection_id, user_id in held:
                await self._register(keys=[_slots_key(user_id)], args=[connection_id, self._slot_ttl_ms], client=pipe)
            for user_id in {user_id for _, user_id in held}:
                await self._seen(keys=[USERS_KEY], args=[user_id, self._slot_ttl_ms], client=pipe)
            await self._count_users(keys=[USERS_KEY], client=pipe)
            results = await pipe.execute()
        self.cluster_users = int(results[-1])
        # a connection that closed while the pipeline ran was released before it was registered
        gone = [(c, u) for c, u in held if c not in self._held]
        if gone:
            async with self._client.pipeline(transaction=False) as pipe:
                for connection_id, user_id in gone:
                    pipe.zrem(_slots_key(user_id), connection_id)
                await pipe.execute()
        return len(held)

    async def _keep_alive(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._slot_ttl_ms / 3000):
                    await self._wake.wait()
            self._wake.clear()
            self._local.forget_idle(3_600_000)
            try:
                if self._stale:
                    self._stale = False
                    count = await self.register_all()
                    logger.info("Redis: %d connection slots of this gateway registered again", count)
                else:
                    await self.refresh(list(self._held.items()))
            except (RedisError, OSError) as exc:
                self._failed("refresh", exc)  # retried next round; meanwhile the slots may expire
            else:
                self._recovered()

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        held, self._held, self._by_user = list(self._held.items()), {}, {}
        with contextlib.suppress(RedisError, OSError):
            async with self._client.pipeline(transaction=False) as pipe:
                for connection_id, user_id in held:
                    await self._release(keys=[_slots_key(user_id)], args=[connection_id], client=pipe)
                left = await pipe.execute()
            gone = {user_id for (_, user_id), count in zip(held, left, strict=True) if not count}
            if gone:
                await self._client.zrem(USERS_KEY, *gone)
        await self._client.aclose()
