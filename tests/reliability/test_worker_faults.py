"""Workers die (SIGKILL), stop (SIGTERM) or keep failing on a request: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import signal

import asyncpg

from tests.reliability.helpers import (
    assert_ledger,
    ended,
    frames_until,
    gateway_with_client,
    in_flight,
    joined,
    queue_depth,
)
from tests.support.client import make_token
from tests.support.cluster import Cluster


async def test_worker_killed_mid_answer_another_attempt_restarts_it_once(rel: Cluster, db: asyncpg.Connection) -> None:
    gateway, *workers = await asyncio.gather(
        rel.gateway(), rel.worker(WORKER_CONCURRENCY=1), rel.worker(WORKER_CONCURRENCY=1)
    )
    client, chat_id = await joined(gateway.extra["ws_url"], make_token("rel-kill-worker"))
    async with client:
        await client.send("send_message", {"content": "kill me [[slow:80]] [[tokens:30]]"})
        frames = await frames_until(client, lambda f: sum(x["type"] == "response_chunk" for x in f) >= 3)
        loads = [await in_flight(w) for w in workers]
        assert sorted(loads) == [0, 1], loads
        holder = workers[loads.index(1)]
        holder.signal(signal.SIGKILL)
        frames += await frames_until(client, ended)

    kinds = [f["type"] for f in frames]
    assert kinds[:2] == ["message_accepted", "response_start"]
    assert "attempt" not in frames[1]["data"]
    restarts = [i for i, f in enumerate(frames) if f["type"] == "response_start" and i > 1]
    assert len(restarts) == 1, kinds
    restart = frames[restarts[0]]
    assert restart["data"]["attempt"] == 2
    assert restart["data"]["messageId"] == frames[1]["data"]["messageId"]
    second = [f["data"] for f in frames[restarts[0] :] if f["type"] == "response_chunk"]
    seqs = [c["seq"] for c in second]
    assert seqs == sorted(seqs), seqs
    assert seqs[0] == 1, seqs  # the new attempt's own sequence, not interleaved
    end = frames[-1]
    assert end["type"] == "response_end", end
    assert "".join(c["delta"] for c in second) == end["data"]["content"]
    assert end["data"]["content"].endswith("point28")  # the whole answer (30 tokens, 2 of them the preamble)

    outcome = await assert_ledger(db, [chat_id], {frames[0]["data"]["messageId"]})
    assert list(outcome.values()) == [("complete", None, "complete")]


async def test_request_that_keeps_killing_workers_is_dead_lettered_and_client_told(
    own_queues: Cluster, db: asyncpg.Connection
) -> None:
    """Delivery limit 1: the first delivery and one redelivery, then the dead-letter queue."""
    _, client, chat_id = await gateway_with_client(own_queues, "rel-poison", REQUEST_DELIVERY_LIMIT=1)
    async with client:
        await client.send("send_message", {"content": "poison [[slow:200]] [[tokens:50]]"})
        accepted = await client.recv_type("message_accepted")
        for attempt in (1, 2):
            worker = await own_queues.worker(REQUEST_DELIVERY_LIMIT=1, WORKER_CONCURRENCY=1)
            start = await client.recv_type("response_start", timeout=15)
            assert start["data"].get("attempt", 1) == attempt
            worker.signal(signal.SIGKILL)
            await worker.wait_exit(5)
        assert await queue_depth(own_queues.services.amqp_url, "chat.requests.dead") == 1
        await own_queues.worker(REQUEST_DELIVERY_LIMIT=1)  # takes the dead-letter notice
        error = await client.recv_type("error", timeout=15)
        assert error["data"]["code"] == "INTERNAL"
        assert error["data"]["messageId"] == start["data"]["messageId"]
        await client.send("ping")
        assert (await client.recv_type("pong"))["type"] == "pong"  # still connected

    outcome = await assert_ledger(db, [chat_id], {accepted["data"]["messageId"]})
    assert list(outcome.values()) == [("failed", "INTERNAL", None)]
    assert await queue_depth(own_queues.services.amqp_url, "chat.requests.messages") == 0


async def test_worker_sigterm_finishes_in_flight_then_requeues_what_outlives_the_grace(
    rel: Cluster, db: asyncpg.Connection
) -> None:
    gateway, first = await asyncio.gather(rel.gateway(), rel.worker(SHUTDOWN_GRACE=2500))
    url, token = gateway.extra["ws_url"], make_token("rel-worker-term")
    quick, quick_chat = await joined(url, token)
    slow, slow_chat = await joined(url, token)
    async with quick, slow:
        await quick.send("send_message", {"content": "short one [[slow:100]] [[tokens:12]]"})
        await slow.send("send_message", {"content": "long one [[slow:150]] [[tokens:60]]"})
        await quick.recv_type("response_chunk")
        await slow.recv_type("response_chunk")
        first.signal(signal.SIGTERM)
        quick_answer = await quick.collect(timeout=10)  # finishes within the grace on the stopping worker
        assert quick_answer.end is not None, quick_answer.frames
        assert quick_answer.end["finishReason"] == "stop"
        assert await first.wait_exit(10) == 0
        await rel.worker()  # the long one went back to the queue: the next worker answers it again
        restart = await slow.recv_type("response_start", timeout=15)
        assert restart["data"]["attempt"] == 2
        slow_answer = await slow.collect(timeout=20)
        assert slow_answer.end is not None, slow_answer.frames
        assert slow_answer.end["content"].endswith("point58")
    rows = await db.fetch(
        "SELECT id::text FROM messages WHERE chat_id = ANY($1::uuid[]) AND role = 'user'", [quick_chat, slow_chat]
    )
    outcome = await assert_ledger(db, [quick_chat, slow_chat], {r["id"] for r in rows})
    assert sorted(outcome.values()) == [("complete", None, "complete")] * 2
