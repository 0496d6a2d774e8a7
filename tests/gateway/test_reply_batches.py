"""The gateway's side of the batched reply transport, over a real gateway, RabbitMQ and WebSockets.

The test plays the worker: it takes the requests the gateway published from their queue and
answers them with reply batches (``chat_common.reply_batch``) published to the gateway's reply queue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractExchange

from chat_common import topology
from chat_common.envelopes import ChatRequest, ReplyHeaders
from chat_common.reply_batch import BATCH_HEADER, BATCH_VERSION, Reply, encode_batch
from chat_common.server_frames import response_chunk_frame, response_end_frame, response_start_frame
from tests.gateway.conftest import joined, still_open, user
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess


class FakeWorker:
    """Takes the gateway's requests from the broker and publishes replies to its reply queue."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, replies: AbstractExchange, reply_to: str) -> None:
        self.channel, self.replies, self.reply_to = channel, replies, reply_to

    async def take(self, count: int) -> list[ChatRequest]:
        queue = await self.channel.get_queue(topology.request_queue_name("messages"))
        taken: list[ChatRequest] = []
        for _ in range(200):
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            await message.ack()
            taken.append(ChatRequest.model_validate_json(message.body))
            if len(taken) == count:
                return taken
        raise AssertionError(f"{len(taken)} of {count} requests reached the queue")

    async def publish(self, body: bytes, headers: dict[str, Any]) -> None:
        await self.replies.publish(aio_pika.Message(body, headers=headers), routing_key=self.reply_to)

    async def batch(self, replies: list[Reply]) -> None:
        await self.publish(encode_batch(replies), {BATCH_HEADER: BATCH_VERSION})


def answer(request: ChatRequest, deltas: list[str], *, attempt: int = 1) -> list[Reply]:
    """The frames of a whole answer, as a worker sends them."""
    message_id = request.assistant_message_id

    def entry(kind: str, seq: int, frame: str) -> Reply:
        return Reply(kind, request.connection_id, request.request_id, message_id, seq, attempt, None, frame)

    start = {"messageId": message_id, "chatId": request.chat_id, "userMessageId": request.user_message_id}
    frames = [entry("start", 0, response_start_frame(start))]
    for seq, delta in enumerate(deltas, start=1):
        frames.append(entry("chunk", seq, response_chunk_frame({"messageId": message_id, "delta": delta, "seq": seq})))
    end = {"messageId": message_id, "content": "".join(deltas), "usage": None, "finishReason": "stop"}
    frames.append(entry("end", len(deltas) + 1, response_end_frame(end)))
    return frames


@pytest.fixture
async def setup(cluster: Cluster) -> AsyncIterator[tuple[ServiceProcess, FakeWorker]]:
    gateway = await cluster.gateway()
    connection = await aio_pika.connect(cluster.services.amqp_url)
    try:
        channel = await connection.channel()
        yield gateway, FakeWorker(channel, await topology.declare_replies(channel), gateway.extra["instance_id"])
    finally:
        await connection.close()


async def _accepted(client: ChatClient, content: str) -> dict[str, Any]:
    await client.send("send_message", {"content": content})
    return (await client.recv_type("message_accepted"))["data"]


async def _asked(gateway: ServiceProcess, worker: FakeWorker, name: str) -> tuple[ChatClient, ChatRequest]:
    """A client of a new user that asked a question, and the request the worker took for it."""
    client = await joined(gateway.extra["ws_url"], make_token(user(name)))
    await _accepted(client, "question")
    (request,) = await worker.take(1)
    return client, request


async def test_one_batch_carries_the_answers_of_two_connections_each_whole_and_in_order(
    setup: tuple[ServiceProcess, FakeWorker],
) -> None:
    gateway, worker = setup
    url = gateway.extra["ws_url"]
    alice = await joined(url, make_token(user("alice")))
    bob = await joined(url, make_token(user("bob")))
    await _accepted(alice, "question of alice")
    await _accepted(bob, "question of bob")
    requests = await worker.take(2)
    by_connection = {r.user_id.split("-")[0]: r for r in requests}
    a_frames = answer(by_connection["alice"], ["Hel", "lo ", "Alice"])
    b_frames = answer(by_connection["bob"], ["Hi ", "Bob"])
    # interleaved as a worker's flush interleaves concurrent answers
    mixed = [frame for pair in zip(a_frames, b_frames, strict=False) for frame in pair]
    mixed += a_frames[len(b_frames) :]
    await worker.batch(mixed[:4])
    await worker.batch(mixed[4:])
    for client, text in ((alice, "Hello Alice"), (bob, "Hi Bob")):
        got = await client.collect(timeout=10)
        assert got.start is not None, got.frames
        assert got.end is not None, got.frames
        assert got.text == text
        assert [c["seq"] for c in got.chunks] == list(range(1, len(got.chunks) + 1))
        assert got.end["content"] == text
    await alice.close()
    await bob.close()


async def test_a_malformed_batch_is_dropped_whole_and_touches_no_connection(
    setup: tuple[ServiceProcess, FakeWorker],
) -> None:
    gateway, worker = setup
    client, request = await _asked(gateway, worker, "malformed")
    frames = answer(request, ["right"])
    wrong_type = [list(frames[0])]
    wrong_type[0][4] = "zero"  # seq must be an integer
    for body in (b"not json", b'{"an": "object"}', b"[[1, 2]]", json.dumps(wrong_type).encode(), b"\xff\xfe"):
        await worker.publish(body, {BATCH_HEADER: BATCH_VERSION})
    # a batch whose second entry is broken: its first entry (a valid start) is not forwarded either
    broken = json.dumps([list(frames[0]), [*frames[1][:7], 42]]).encode()
    await worker.publish(broken, {BATCH_HEADER: BATCH_VERSION})
    await still_open(client)
    # the frames that did arrive: none of the dropped batches
    await worker.batch(frames)
    got = await client.collect(timeout=10)
    assert [f["type"] for f in got.frames] == ["response_start", "response_chunk", "response_end"], got.frames
    assert got.text == "right"
    await client.close()
    assert gateway.process is not None
    assert gateway.process.poll() is None
    log = gateway.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert log.count("reply batch dropped") == 6


async def test_single_replies_of_an_earlier_worker_release_are_still_forwarded(
    setup: tuple[ServiceProcess, FakeWorker],
) -> None:
    """During a rolling update old workers send one frame per message, its routing facts in headers."""
    gateway, worker = setup
    client, request = await _asked(gateway, worker, "single")
    for reply in answer(request, ["one ", "by ", "one"]):
        headers = ReplyHeaders(
            kind=reply.kind,  # type: ignore[arg-type]
            connection_id=reply.connection_id,
            request_id=reply.request_id,
            message_id=reply.message_id,
            seq=reply.seq,
        )
        await worker.publish(reply.frame.encode(), headers.to_amqp())
    got = await client.collect(timeout=10)
    assert got.text == "one by one"
    assert got.end is not None
    await client.close()
