"""RabbitMQ and PostgreSQL go away and come back: clients hear BUSY, stay connected, nothing is lost.

The outages are made with a TCP proxy between the processes and the real services (cut: every
connection dropped, new ones refused), so that other tests on the same broker and database are not
disturbed; the broker-side close uses ``rabbitmqctl close_all_connections`` on this test's vhost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from tests.reliability.helpers import assert_ledger, gateway_broker_connected, joined, stream_ended
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess
from tests.support.proxy import TcpProxy
from tests.support.services import close_broker_connections
from tests.support.wait import eventually


async def _until(client: ChatClient, frames: list[dict[str, Any]], kind: str, timeout: float = 20) -> dict[str, Any]:
    """Read frames into ``frames`` until one of ``kind`` arrives; return it."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await client.recv(max(0.05, deadline - time.monotonic()))
        frames.append(frame)
        if frame["type"] == kind:
            return frame


@dataclass
class _Cut:
    proxy: TcpProxy
    gateway: ServiceProcess
    client: ChatClient
    chat_id: str
    frames: list[dict[str, Any]]
    """every frame the client read, in order"""
    first: dict[str, Any]
    """``message_accepted`` of the question whose answer was streaming when the proxy was cut"""


@contextlib.asynccontextmanager
async def _cut_mid_answer(
    rel: Cluster, url: str, port: int, *, setting: str, user: str, question: str, **gateway_env: str | int
) -> AsyncIterator[_Cut]:
    """A gateway and a worker that reach the service at ``url`` (their ``setting``) through a proxy,
    and a joined client of ``user`` whose ``question`` is being answered: the proxy is cut once the
    first chunk has arrived. The client is closed, then the proxy, on the way out."""
    proxy = await TcpProxy(url, port).start()
    through = proxy.url(url)
    try:
        gateway, _ = await asyncio.gather(
            rel.gateway(**{setting: through}, **gateway_env), rel.worker(**{setting: through})
        )
        client, chat_id = await joined(gateway.extra["ws_url"], make_token(user))
        frames: list[dict[str, Any]] = []
        async with client:
            await client.send("send_message", {"content": question})
            first = await _until(client, frames, "message_accepted")
            await _until(client, frames, "response_chunk")
            await proxy.cut()
            yield _Cut(proxy, gateway, client, chat_id, frames, first)
    finally:
        await proxy.close()


async def test_broker_outage_busy_meanwhile_in_flight_answer_redone_and_everything_reconnects(
    rel: Cluster, db: asyncpg.Connection
) -> None:
    async with _cut_mid_answer(
        rel,
        rel.services.amqp_url,
        5672,
        setting="AMQP_URL",
        user="rel-broker",
        question="across the outage [[slow:100]] [[tokens:40]]",
        PUBLISH_TIMEOUT=2000,
    ) as cut:
        proxy, gateway, client, frames, first = cut.proxy, cut.gateway, cut.client, cut.frames, cut.first

        sent = time.monotonic()
        await client.send("send_message", {"content": "during the outage"})
        busy = await _until(client, frames, "error")
        assert time.monotonic() - sent < 3, "BUSY must come without waiting for the broker"
        assert busy["data"]["code"] == "BUSY"
        assert busy["data"]["retryAfterMs"] > 0
        during = frames[-2]
        assert during["type"] == "message_accepted"
        await client.send("ping")
        await _until(client, frames, "pong")  # the client stays connected

        await asyncio.sleep(1.5)  # the outage lasts (the behaviour under test): nothing to wait for
        proxy.restore()
        await eventually(lambda: gateway_broker_connected(gateway), timeout=20)
        # the answer in flight when the connection dropped went back to the queue and is redone
        restart = await _until(client, frames, "response_start")
        assert restart["data"]["attempt"] == 2
        end = await _until(client, frames, "response_end")
        assert end["data"]["content"].endswith("point38")

        # the broker itself closes every connection of this vhost: all recover again
        assert rel.services.vhost is not None
        closed = await close_broker_connections(rel.services.vhost, "reliability test")
        assert closed is not None, "rabbitmqctl is needed"
        assert closed.returncode == 0, closed.stderr
        await eventually(lambda: gateway_broker_connected(gateway), timeout=20)

        async def answered() -> dict[str, Any] | None:
            """BUSY until the gateway's channel is back, then an answer."""
            await client.send("send_message", {"content": "after the broker closed us"})
            accepted = await _until(client, frames, "message_accepted")
            outcome = await client.collect(timeout=20)
            if outcome.end is not None:
                return accepted
            assert outcome.error is not None
            assert outcome.error["code"] == "BUSY"
            return None

        after = await eventually(
            answered,
            timeout=60,
            interval=0.5,
            retry_on=(),
            what="an answer after the broker closed the connections",
        )

    accepted_ids = {f["data"]["messageId"] for f in frames if f["type"] == "message_accepted"}
    accepted_ids |= {
        r["id"]
        for r in await db.fetch("SELECT id::text FROM messages WHERE chat_id = $1::uuid AND role = 'user'", cut.chat_id)
        if r["id"] in accepted_ids
    }
    outcome_by_id = await assert_ledger(db, [cut.chat_id], accepted_ids)
    assert outcome_by_id[first["data"]["messageId"]] == ("complete", None, "complete")
    assert outcome_by_id[during["data"]["messageId"]] == ("failed", "BUSY", None)
    assert outcome_by_id[after["data"]["messageId"]] == ("complete", None, "complete")


async def test_database_outage_busy_meanwhile_answer_in_flight_stored_once_pool_recovers(
    rel: Cluster, fake: ServiceProcess, db: asyncpg.Connection
) -> None:
    async with _cut_mid_answer(
        rel,
        rel.services.database_url,
        5432,
        setting="DATABASE_URL",
        user="rel-database",
        question="while the database restarts [[slow:100]] [[tokens:25]]",
    ) as cut:
        proxy, client, frames, first = cut.proxy, cut.client, cut.frames, cut.first

        await client.send("send_message", {"content": "nobody can store this"})
        busy = await _until(client, frames, "error")
        assert busy["data"]["code"] == "BUSY"
        assert "storage" in busy["data"]["message"]
        assert busy["data"]["retryAfterMs"] > 0
        assert frames[-2]["type"] != "message_accepted" or frames[-2] is first  # never accepted

        # the first answer finishes streaming; the worker cannot store it yet
        await eventually(lambda: stream_ended(fake, "while the database restarts"), timeout=10)
        proxy.restore()
        end = await _until(client, frames, "response_end")
        assert end["data"]["content"].endswith("point23")
        answer = await client.ask("the pool is back")
        assert answer.end is not None, answer.frames

    accepted = {first["data"]["messageId"], answer.accepted["messageId"]}  # type: ignore[index]
    outcome = await assert_ledger(db, [cut.chat_id], accepted)
    assert sorted(outcome.values()) == [("complete", None, "complete")] * 2
    rows = await db.fetch("SELECT content FROM messages WHERE chat_id = $1::uuid", cut.chat_id)
    assert all("nobody can store this" not in r["content"] for r in rows)
