"""Frames that cost the gateway more than a frame: chat creation and history loads have a per-user
budget (across gateways with Redis), a resume is broadcast at most once per answer in flight, and
the reply consumer takes at most ``REPLY_PREFETCH`` replies ahead of what it has read."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from chat_common import topology
from chat_common.envelopes import ReplyHeaders
from tests.gateway.conftest import joined, still_open, user
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess
from tests.support.wait import eventually

BUDGET = 3
PREFETCH = 40


@pytest.fixture(scope="module")
async def gateways(module_cluster: Cluster) -> list[ServiceProcess]:
    env = {
        "REDIS_URL": module_cluster.services.redis_url,
        "WS_CHAT_CREATES_PER_MINUTE": BUDGET,
        "WS_HISTORY_READS_PER_MINUTE": BUDGET,
    }
    return list(await asyncio.gather(module_cluster.gateway(**env), module_cluster.gateway(**env)))


@pytest.fixture(scope="module")
async def plain(module_cluster: Cluster) -> ServiceProcess:
    """A gateway with the default budgets and a small reply prefetch."""
    return await module_cluster.gateway(REPLY_PREFETCH=PREFETCH)


async def _answer(client: ChatClient, frame_type: str, data: dict[str, Any]) -> dict[str, Any]:
    await client.send(frame_type, data, requestId="costly")
    return await client.recv_type("chat_created", "chat_switched", "chat_joined", "error")


def _assert_rate_limited(frame: dict[str, Any], text: str) -> None:
    assert frame["type"] == "error", frame
    assert frame["data"]["code"] == "RATE_LIMITED", frame
    assert text in frame["data"]["message"], frame
    assert 0 < frame["data"]["retryAfterMs"] <= 60_000, frame


async def test_chat_creation_has_a_per_user_budget_across_gateways(
    gateways: list[ServiceProcess], db: asyncpg.Connection
) -> None:
    user_id = user("creates")
    token = make_token(user_id)
    on_a = await joined(gateways[0].extra["ws_url"], token)  # a join without chatId creates one: 1
    assert (await _answer(on_a, "create_chat", {"chatType": "documents"}))["type"] == "chat_created"  # 2
    on_b = await joined(gateways[1].extra["ws_url"], token)  # 3, on the other gateway
    for client in (on_b, on_a):
        _assert_rate_limited(await _answer(client, "create_chat", {"chatType": "messages"}), "new chats per minute")
        await still_open(client)
    chats = await db.fetchval("SELECT count(*) FROM chats WHERE user_id = $1", user_id)
    assert chats == BUDGET
    await on_a.close()
    await on_b.close()


async def test_history_loads_have_a_per_user_budget_across_gateways(gateways: list[ServiceProcess]) -> None:
    token = make_token(user("reads"))
    on_a = await joined(gateways[0].extra["ws_url"], token)
    chat = (await _answer(on_a, "create_chat", {"chatType": "messages"}))["data"]["chatId"]
    on_b = await joined(gateways[1].extra["ws_url"], token)
    switch = {"chatId": chat, "chatType": "messages"}
    assert (await _answer(on_a, "switch_chat", switch))["type"] == "chat_switched"  # 1
    assert (await _answer(on_b, "switch_chat", switch))["type"] == "chat_switched"  # 2
    rejoin = {"token": token, "chatType": "messages", "chatId": chat}
    assert (await _answer(on_a, "join_chat", rejoin))["type"] == "chat_joined"  # 3: a join loads history too
    _assert_rate_limited(await _answer(on_b, "switch_chat", switch), "chat history loads per minute")
    _assert_rate_limited(await _answer(on_a, "join_chat", rejoin), "chat history loads per minute")
    await still_open(on_a)
    await on_a.close()
    await on_b.close()


@pytest.fixture
async def control_messages(module_cluster: Cluster) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """Every control message the gateways broadcast to the workers, as a worker hears them."""
    connection = await aio_pika.connect(module_cluster.services.amqp_url)
    heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    try:
        channel = await connection.channel()
        exchange = await topology.declare_control(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            heard.put_nowait(json.loads(message.body))

        await queue.consume(on_message, no_ack=True)
        yield heard
    finally:
        await connection.close()


async def test_a_resume_is_broadcast_once_per_answer_in_flight(
    plain: ServiceProcess, control_messages: asyncio.Queue[dict[str, Any]]
) -> None:
    url = plain.extra["ws_url"]
    user_id = user("resumes")
    token = make_token(user_id)
    first = await joined(url, token)
    chat = (await _answer(first, "create_chat", {"chatType": "messages"}))["data"]["chatId"]
    wanted, other, last = (str(uuid.uuid4()) for _ in range(3))

    def rejoin(message_id: str) -> dict[str, Any]:
        return {"token": token, "chatType": "messages", "chatId": chat, "messageId": message_id, "lastSeq": 3}

    second = await ChatClient.connect(url)
    assert (await second.join(token))["type"] == "chat_joined"
    assert (await _answer(first, "join_chat", rejoin(wanted)))["type"] == "chat_joined"  # broadcast
    for client, message_id in ((first, other), (second, wanted)):  # while that one waits for its replay
        await client.send("join_chat", rejoin(message_id), requestId="again")
        assert (await client.recv_type("chat_joined"))["data"]["chatId"] == chat
        refused = await client.recv_type("error")
        assert refused["data"]["code"] == "RATE_LIMITED", refused
        assert 0 < refused["data"]["retryAfterMs"] <= 5000, refused
    third = await ChatClient.connect(url)
    assert (await third.join(token))["type"] == "chat_joined"
    assert (await _answer(third, "join_chat", rejoin(last)))["type"] == "chat_joined"  # broadcast

    resumed: list[str] = []
    deadline = time.monotonic() + 10
    while last not in resumed:  # one publisher, one queue: everything before ``last`` has arrived
        control = await asyncio.wait_for(control_messages.get(), max(0.01, deadline - time.monotonic()))
        if control["kind"] == "resume" and control["user_id"] == user_id:
            resumed.append(control["message_id"])
    assert resumed == [wanted, last]
    for client in (first, second, third):
        await client.close()


async def test_reply_consumer_leaves_what_it_has_not_taken_in_the_broker(
    module_cluster: Cluster, plain: ServiceProcess
) -> None:
    """A stalled gateway (SIGSTOP) holds at most REPLY_PREFETCH replies; the rest wait in its queue
    and are taken (and acknowledged) once it runs again."""
    gateway = plain
    instance = gateway.extra["instance_id"]
    sent = 10 * PREFETCH
    connection = await aio_pika.connect(module_cluster.services.amqp_url)
    try:
        channel = await connection.channel()
        replies = await topology.declare_replies(channel)

        async def waiting() -> int:
            declared = await channel.declare_queue(topology.reply_queue_name(instance), passive=True)
            return int(declared.declaration_result.message_count or 0)

        gateway.signal(signal.SIGSTOP)
        try:
            for seq in range(sent):  # chunks of an answer nobody waits for (one cancel, then dropped)
                headers = ReplyHeaders(
                    kind="chunk", connection_id="gone", request_id="req-prefetch", message_id="msg", seq=seq
                )
                body = json.dumps({"type": "response_chunk", "data": {"delta": "x" * 50, "seq": seq}})
                await replies.publish(aio_pika.Message(body.encode(), headers=headers.to_amqp()), routing_key=instance)
            await eventually(lambda: _at_least(waiting, sent - PREFETCH), timeout=10)
        finally:
            gateway.signal(signal.SIGCONT)
        await eventually(lambda: _at_most(waiting, 0), timeout=15)  # taken and acknowledged
    finally:
        await connection.close()
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(gateway.extra["http_url"] + "/api/websocket/health")).status_code == 200


async def _at_least(count: Any, value: int) -> bool:
    return bool(await count() >= value)


async def _at_most(count: Any, value: int) -> bool:
    return bool(await count() <= value)
