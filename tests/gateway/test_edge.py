"""Process capacity, allowed origins and the inactivity sweep, over real sockets."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.exceptions import InvalidStatus

from tests.gateway.conftest import connect, joined, refusals, still_open, until_closed, user
from tests.support.client import make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess
from tests.support.wait import eventually

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
async def edge(module_cluster: Cluster) -> ServiceProcess:
    return await module_cluster.gateway(
        WS_MAX_CONNECTIONS=3,
        WS_ALLOWED_ORIGINS=f"{ORIGIN},https://other.example",
        WS_INACTIVE_TIMEOUT=1500,
        WS_CLEANUP_INTERVAL=200,
    )


async def test_server_at_capacity_and_the_place_comes_back(edge: ServiceProcess) -> None:
    url = edge.extra["ws_url"]
    holders = [await joined(url, make_token(user("cap")), origin=ORIGIN) for _ in range(2)]
    unauthenticated = await connect(url, origin=ORIGIN)  # a socket counts before it authenticates too
    refused = await connect(url, origin=ORIGIN)
    ending = await until_closed(refused)
    assert ending.errors == ["SERVER_AT_CAPACITY"]
    assert ending.frames[0]["data"]["message"] == "Server at capacity"
    assert ending.code == 1013
    for holder in holders:
        await still_open(holder)

    await unauthenticated.close()

    async def admitted() -> bool:
        client = await connect(url, origin=ORIGIN)
        frame = await client.join(make_token(user("cap-after")))
        await client.close()
        return frame["type"] == "chat_joined"

    await eventually(admitted, timeout=5)
    for holder in holders:
        await holder.close()


@pytest.mark.parametrize("origin", [None, "https://evil.example", "https://app.example.evil.example"])
async def test_origins_outside_the_allow_list_are_refused_at_the_handshake(
    edge: ServiceProcess, origin: str | None
) -> None:
    before = await refusals(edge.extra["http_url"])
    with pytest.raises(InvalidStatus) as refused:
        await connect(edge.extra["ws_url"], origin=origin)
    assert refused.value.response.status_code == 403
    after = await refusals(edge.extra["http_url"])
    key = ("FORBIDDEN_ORIGIN", "origin")
    assert after[key] == before.get(key, 0) + 1


async def test_allowed_origins_are_served(edge: ServiceProcess) -> None:
    for origin in (ORIGIN, "https://other.example"):
        client = await joined(edge.extra["ws_url"], make_token(user("origin")), origin=origin)
        await client.close()


async def test_inactive_connections_are_swept_and_active_ones_kept(edge: ServiceProcess) -> None:
    url = edge.extra["ws_url"]
    idle = await joined(url, make_token(user("idle")), origin=ORIGIN)
    busy = await joined(url, make_token(user("busy")), origin=ORIGIN)
    idle_since = time.monotonic()

    async def keep_busy() -> None:
        while True:
            await still_open(busy)  # the client's own ping frames count as activity
            await asyncio.sleep(0.3)

    keeper = asyncio.create_task(keep_busy())
    try:
        ending = await until_closed(idle, timeout=5)
        waited = time.monotonic() - idle_since
    finally:
        keeper.cancel()
    assert ending.code == 1000
    assert ending.reason == "inactive"
    assert 1.4 <= waited <= 1.5 + 0.2 + 1.3  # WS_INACTIVE_TIMEOUT + WS_CLEANUP_INTERVAL + slack
    await still_open(busy)
    await busy.close()
