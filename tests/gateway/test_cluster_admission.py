"""With REDIS_URL, per-user limits hold across gateway processes, and a killed gateway's slots expire."""

from __future__ import annotations

import signal
import time

import httpx

from tests.gateway.conftest import connect, joined, until_closed, user
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import free_port

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
    }
    first, second = await cluster.gateway(**env), await cluster.gateway(**env)
    url_a, url_b = first.extra["ws_url"], second.extra["ws_url"]

    # connection slots: one on each gateway uses up the user's two
    token = make_token(user("cluster"))
    on_a, on_b = await joined(url_a, token), await joined(url_b, token)
    assert await refused_on(url_a, token) == "TOO_MANY_CONNECTIONS"
    assert await refused_on(url_b, token) == "TOO_MANY_CONNECTIONS"
    await on_a.close()
    for _ in range(50):  # the slot is given back as soon as gateway A sees the close
        if (admitted := await refused_on(url_b, token)) is None:
            break
    assert admitted is None

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
    while (outcome := await refused_on(url_a, victim)) is not None:
        assert outcome == "TOO_MANY_CONNECTIONS"
        assert time.monotonic() - killed_at < SLOT_TTL_MS / 1000 + 2.0, "slots of the killed gateway did not expire"
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
