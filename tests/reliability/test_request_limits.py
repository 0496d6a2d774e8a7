"""Backpressure (a full queue is BUSY), deadlines (TIMEOUT; stale requests skipped), cancel and
disconnect (the model call stops within a bounded time; the partial answer is stored as cancelled)."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.reliability.helpers import (
    assert_ledger,
    gateway_with_client,
    joined,
    ledger,
    queue_depth,
    stream_ended,
    stream_of,
)
from tests.support.client import make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess
from tests.support.wait import eventually


async def test_full_request_queue_is_busy_with_retry_after_and_drains_when_a_worker_comes(
    own_queues: Cluster, db: asyncpg.Connection
) -> None:
    _, client, chat_id = await gateway_with_client(own_queues, "rel-backpressure", REQUEST_QUEUE_MAX_LENGTH=2)
    async with client:
        # a quorum queue applies its bound a little late (it rejects once over the length), so
        # send until refused: within a message or two of the bound, and nothing unbounded
        queued, refused = [], None
        for index in range(5):
            await client.send("send_message", {"content": f"queued {index}"})
            accepted = await client.recv_type("message_accepted")
            try:
                error = await client.recv_type("error", timeout=1.0)
            except TimeoutError:
                queued.append(accepted)
                continue
            refused = (accepted, error)
            break
        assert refused is not None, "the queue bound was never enforced"
        assert 2 <= len(queued) <= 3, len(queued)
        refused_accepted, error = refused
        assert error["data"]["code"] == "BUSY"
        assert error["data"]["retryAfterMs"] > 0
        assert error["data"]["messageId"] == refused_accepted["data"]["messageId"]
        assert await queue_depth(own_queues.services.amqp_url, "chat.requests.messages") == len(queued)

        await own_queues.worker(REQUEST_QUEUE_MAX_LENGTH=2)  # queue arguments must match
        ends = [await client.recv_type("response_end", timeout=20) for _ in queued]
        assert {e["data"]["finishReason"] for e in ends} == {"stop"}

    refused_id = refused_accepted["data"]["messageId"]
    outcome = await assert_ledger(db, [chat_id], {q["data"]["messageId"] for q in queued} | {refused_id})
    assert outcome.pop(refused_id) == ("failed", "BUSY", None)
    assert list(outcome.values()) == [("complete", None, "complete")] * len(queued)


async def test_timeout_for_the_client_stale_request_skipped_slow_answer_stopped(
    rel: Cluster, fake: ServiceProcess, db: asyncpg.Connection
) -> None:
    gateway = await rel.gateway(REQUEST_TIMEOUT=2000)
    client, chat_id = await joined(gateway.extra["ws_url"], make_token("rel-timeout"))
    async with client:
        # nobody answers: TIMEOUT after REQUEST_TIMEOUT, and the request is dropped, never answered late
        started = time.monotonic()
        stale = await client.ask("nobody is listening yet", timeout=10)
        assert stale.error is not None
        assert stale.error["code"] == "TIMEOUT"
        assert 1.8 < time.monotonic() - started < 5
        await rel.worker()
        # a slow answer: TIMEOUT for the client, the worker stops the model and stores what it had
        slow = await client.ask("too slow [[slow:200]] [[tokens:50]]", timeout=10)
        assert slow.error is not None
        assert slow.error["code"] == "TIMEOUT"
        aborted = await eventually(lambda: stream_ended(fake, "too slow"), timeout=5)
        assert aborted["state"] == "aborted"
        assert aborted["sent"] < aborted["total"]
        assert await stream_of(fake, "nobody is listening yet") == []  # skipped, never sent to the model

    assert stale.accepted is not None
    assert slow.accepted is not None
    rows = await eventually(lambda: _settled(db, chat_id), timeout=10)
    outcome = await assert_ledger(db, [chat_id], {stale.accepted["messageId"], slow.accepted["messageId"]})
    assert outcome[stale.accepted["messageId"]] == ("failed", "TIMEOUT", None)
    assert outcome[slow.accepted["messageId"]] == ("failed", "TIMEOUT", "failed")
    partial = next(r for r in rows if r["role"] == "assistant")
    assert partial["finish_reason"] == "timeout"
    assert partial["content"].startswith("Regarding")


async def _settled(db: asyncpg.Connection, chat_id: str) -> list[asyncpg.Record] | None:
    rows = await ledger(db, [chat_id])
    return rows if all(r["status"] != "accepted" for r in rows) else None


async def test_cancel_and_disconnect_stop_the_model_and_store_the_partial_answer(
    rel: Cluster, fake: ServiceProcess, db: asyncpg.Connection
) -> None:
    gateway, _ = await asyncio.gather(rel.gateway(), rel.worker(RESUME_GRACE=1000))
    url, token = gateway.extra["ws_url"], make_token("rel-cancel")

    client, cancelled_chat = await joined(url, token)
    async with client:
        await client.send("send_message", {"content": "cancel me [[slow:150]] [[tokens:60]]"})
        await client.recv_type("response_chunk")
        await client.recv_type("response_chunk")
        asked = time.monotonic()
        await client.send("cancel", {})
        answer = await client.collect(timeout=10)
        assert time.monotonic() - asked < 2
        assert answer.end is not None, answer.frames
        assert answer.end["finishReason"] == "cancelled"
        cancelled_content = answer.end["content"]
    stream = await eventually(lambda: stream_ended(fake, "cancel me"), timeout=5)
    assert stream["state"] == "aborted"
    assert stream["ended"] - (time.time() - (time.monotonic() - asked)) < 2.5

    client, gone_chat = await joined(url, token)
    await client.send("send_message", {"content": "then I leave [[slow:150]] [[tokens:60]]"})
    await client.recv_type("response_chunk")
    await client.close()
    left = time.time()
    stream = await eventually(lambda: stream_ended(fake, "then I leave"), timeout=8)
    assert stream["state"] == "aborted"
    assert stream["ended"] - left < 1.0 + 2.5  # RESUME_GRACE, then the call stops

    rows = await eventually(lambda: _settled(db, gone_chat), timeout=10)
    for chat_id in (cancelled_chat, gone_chat):
        rows = await ledger(db, [chat_id])
        user = next(r for r in rows if r["role"] == "user")
        outcome = await assert_ledger(db, [chat_id], {user["id"]})
        assert list(outcome.values()) == [("cancelled", None, "cancelled")]
        partial = next(r for r in rows if r["role"] == "assistant")
        assert partial["finish_reason"] == "cancelled"
        assert len(partial["content"]) > 0
        if chat_id == cancelled_chat:
            assert partial["content"] == cancelled_content
