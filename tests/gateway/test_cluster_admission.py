"""With REDIS_URL, per-user limits hold across gateway processes, and a killed gateway's slots expire."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from tests.gateway.conftest import connect, joined, until_closed, user
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import free_port
from tests.support.redis_server import private_redis
from tests.support.wait import eventually

SLOT_TTL_MS = 1500


async def refused_on(url: str, token: str) -> str | None:
    """The error code a new connection of the token's user gets on join, or None if admitted."""
    client = await connect(url)
    frame = await client.join(token)
    if frame["type"] == "chat_joined":
        await client.close()
        return None
    ending = await until_closed(client)
    assert ending.code == 1008
    return str(frame["data"]["code"])


async def send(client: ChatClient, content: str) -> dict[str, object]:
    await client.send("send_message", {"content": content})
    return await client.recv_type("message_accepted", "error")


async def test_limits_hold_across_gateways_and_a_killed_gateway_frees_its_slots(cluster: Cluster) -> None:
    env = {
        "REDIS_URL": cluster.services.redis_url,
        "REDIS_SLOT_TTL": SLOT_TTL_MS,
        "WS_MAX_CONNECTIONS_PER_USER": 2,
        "WS_RATE_LIMIT_MAX_MESSAGES": 3,
        "WS_RATE_LIMIT_WINDOW": 60_000,
        "WS_CHAT_CREATES_PER_MINUTE": 1000,  # the probes create chats
    }
    first, second = await cluster.gateway(**env), await cluster.gateway(**env)
    url_a, url_b = first.extra["ws_url"], second.extra["ws_url"]

    # connection slots: one on each gateway uses up the user's two
    token = make_token(user("cluster"))
    on_a, on_b = await joined(url_a, token), await joined(url_b, token)
    assert await refused_on(url_a, token) == "TOO_MANY_CONNECTIONS"
    assert await refused_on(url_b, token) == "TOO_MANY_CONNECTIONS"
    await on_a.close()
    # the slot is given back as soon as gateway A sees the close
    await eventually(lambda: refused_on(url_b, token), accept=lambda code: code is None, what="the slot given back")

    # rate limit: three messages in the window, wherever they are sent
    on_a = await joined(url_a, token)
    assert (await send(on_a, "one"))["type"] == "message_accepted"
    assert (await send(on_b, "two"))["type"] == "message_accepted"
    assert (await send(on_a, "three"))["type"] == "message_accepted"
    for client in (on_a, on_b):
        limited = await send(client, "four")
        assert limited["type"] == "error"
        data = limited["data"]
        assert isinstance(data, dict)
        assert data["code"] == "RATE_LIMITED"
        assert 55_000 < data["retryAfterMs"] <= 60_000
    await on_a.close()
    await on_b.close()

    # a gateway killed with SIGKILL cannot give its slots back: they expire within REDIS_SLOT_TTL
    victim = make_token(user("victim"))
    held = [await joined(url_b, victim), await joined(url_b, victim)]
    second.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await second.wait_exit(10)
    assert await refused_on(url_a, victim) == "TOO_MANY_CONNECTIONS"  # still held right after the kill

    async def freed() -> bool:
        outcome = await refused_on(url_a, victim)
        assert outcome in (None, "TOO_MANY_CONNECTIONS"), outcome
        return outcome is None

    left = SLOT_TTL_MS / 1000 + 2.0 - (time.monotonic() - killed_at)
    await eventually(freed, timeout=left, interval=0.05, retry_on=(), what="slots of the killed gateway expired")
    freed_after = time.monotonic() - killed_at
    assert freed_after <= SLOT_TTL_MS / 1000 + 2.0
    del held


async def test_without_redis_the_limits_fall_back_to_the_process(cluster: Cluster) -> None:
    """REDIS_URL set but nothing answers there: the gateway starts, and limits hold per process."""
    gateway = await cluster.gateway(
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        WS_MAX_CONNECTIONS_PER_USER=1,
        WS_RATE_LIMIT_MAX_MESSAGES=1,
    )
    url = gateway.extra["ws_url"]
    token = make_token(user("no-redis"))
    client = await joined(url, token)
    assert await refused_on(url, token) == "TOO_MANY_CONNECTIONS"
    assert (await send(client, "one"))["type"] == "message_accepted"
    limited = await send(client, "two")
    assert limited["type"] == "error"
    assert "Redis unreachable" in gateway.log_path.read_text()
    async with httpx.AsyncClient(timeout=5) as http:
        health = (await http.get(f"{gateway.extra['http_url']}/api/websocket/health")).json()
    assert any("Redis unreachable" in issue for issue in health["issues"])
    await client.close()


async def _json(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as http:
        return dict((await http.get(url)).json())


async def _redis_warned(http_url: str) -> bool:
    health = await _json(f"{http_url}/api/websocket/health")
    return any("Redis unreachable" in issue for issue in health["issues"])


async def _redis_ok(http_url: str) -> bool:
    return not await _redis_warned(http_url)


async def test_slots_admitted_while_redis_was_away_count_again_when_it_returns(cluster: Cluster, log_dir: Path) -> None:
    """Redis dies (and comes back empty): the connections admitted before and during the outage are
    registered again, so the per-user limit holds across gateways within REDIS_SLOT_TTL."""
    ttl_ms = 3000
    async with private_redis(log_dir) as redis_server:
        env = {
            "REDIS_URL": redis_server.url,
            "REDIS_SLOT_TTL": ttl_ms,
            "WS_MAX_CONNECTIONS_PER_USER": 2,
            "WS_CHAT_CREATES_PER_MINUTE": 1000,  # every probe below creates a chat
        }
        first, second = await cluster.gateway(**env), await cluster.gateway(**env)
        url_a, url_b = first.extra["ws_url"], second.extra["ws_url"]
        token = make_token(user("outage"))
        before = await joined(url_a, token)  # registered in Redis

        redis_server.stop()
        during = await joined(url_a, token)  # admitted by gateway A's own limit
        # A's own limit counts the connection it admitted through Redis too
        assert await refused_on(url_a, token) == "TOO_MANY_CONNECTIONS"
        await eventually(lambda: _redis_warned(first.extra["http_url"]), timeout=10)

        await redis_server.start()  # empty: every slot is gone
        back = time.monotonic()
        limit_s = ttl_ms / 1000 + 3.0
        outcome = await eventually(
            lambda: refused_on(url_b, token),
            accept=lambda code: code is not None,
            timeout=limit_s - (time.monotonic() - back),
            interval=0.05,
            what="the limit holding across gateways after the outage",
        )
        assert outcome == "TOO_MANY_CONNECTIONS"
        for http_url in (first.extra["http_url"], second.extra["http_url"]):
            await eventually(lambda url=http_url: _redis_ok(url), timeout=limit_s)  # type: ignore[misc]
        assert "2 connection slots of this gateway registered again" in first.log_path.read_text()
        assert await _slot_count_is(redis_server.url, token, 2)
        await during.close()
        await eventually(lambda: _admitted(url_b, token), timeout=5)
        await before.close()


async def _slot_count_is(redis_url: str, token: str, count: int) -> bool:
    import jwt
    import redis.asyncio as redis

    user_id = jwt.decode(token, options={"verify_signature": False})["sub"]
    client = redis.Redis.from_url(redis_url)
    try:
        return int(await client.zcard(f"chat:slots:{{{user_id}}}")) == count
    finally:
        await client.aclose()


async def _admitted(url: str, token: str) -> bool:
    return await refused_on(url, token) is None


async def test_monitor_counts_a_user_on_two_gateways_once(cluster: Cluster, log_dir: Path) -> None:
    async with private_redis(log_dir) as redis_server:  # its own: the count covers every user in it
        env = {"REDIS_URL": redis_server.url, "REDIS_SLOT_TTL": SLOT_TTL_MS}
        first, second = await cluster.gateway(**env), await cluster.gateway(**env)
        monitor = await cluster.monitor()
        both, one = make_token(user("two-gateways")), make_token(user("one-gateway"))
        clients = [
            await joined(first.extra["ws_url"], both),
            await joined(second.extra["ws_url"], both),
            await joined(first.extra["ws_url"], one),
        ]

        async def cluster_figures() -> dict[str, Any]:
            metrics = await _json(monitor.extra["http_url"] + "/api/websocket/metrics")
            return dict(metrics["cluster"])

        async def counted(users: int, connections: int) -> bool:
            figures = await cluster_figures()
            health = await _json(monitor.extra["http_url"] + "/api/websocket/health")
            return (
                figures["users"] == users
                and figures["connections"] == connections
                and figures["usersCounted"] == "distinct"
                and health["metrics"]["totalUsers"] == users
            )

        await eventually(lambda: counted(2, 3), timeout=10)  # the sum over gateways would be 3
        await eventually(lambda: _prometheus_users_are(monitor.extra["http_url"], 2), timeout=5)  # every second
        await clients[1].close()  # still connected on the first gateway
        await clients[2].close()
        await eventually(lambda: counted(1, 1), timeout=10)

        redis_server.stop()  # the gateways cannot count the cluster: the monitor says it sums
        figures = await eventually(
            cluster_figures, accept=lambda f: f["usersCounted"] == "per_gateway_sum", interval=0.2
        )
        assert figures["users"] == 1
        await clients[0].close()


async def _prometheus_users_are(http_url: str, users: int) -> bool:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(http_url + "/metrics")).text
    return re.search(rf"^chat_monitor_users {users}\.0$", text, re.MULTILINE) is not None
