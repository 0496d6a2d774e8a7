"""The worker's reply transport in process: what goes in which batch, in which order, and failures.

The publish function is the AMQP edge (a list here); the same transport runs against the real broker
in every end-to-end and reliability test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chat_common.reply_batch import MalformedBatch, Reply, decode_batch, encode_batch
from llm_worker.reply_batcher import ReplyBatcher


def reply(seq: int, *, message: str = "m1", kind: str = "chunk") -> Reply:
    return Reply(kind, "conn", "req-" + message, message, seq, 1, None, f'{{"seq":{seq}}}')


class Broker:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Reply]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False
        self.publishing = asyncio.Event()

    async def publish(self, reply_to: str, body: bytes) -> None:
        self.publishing.set()
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("channel closed")
        self.sent.append((reply_to, decode_batch(body)))


@pytest.fixture
async def running() -> AsyncIterator[tuple[ReplyBatcher, Broker]]:
    broker = Broker()
    batcher = ReplyBatcher(broker.publish, max_batch_bytes=2000)
    task = asyncio.create_task(batcher.run())
    yield batcher, broker
    task.cancel()


async def test_frames_of_one_turn_leave_in_one_message_per_gateway(running: tuple[ReplyBatcher, Broker]) -> None:
    batcher, broker = running
    for seq in range(3):
        batcher.add("gw-a", reply(seq))
    done = batcher.add("gw-b", reply(0, message="m2"))
    await asyncio.wait_for(done, 1)
    assert broker.sent == [("gw-a", [reply(0), reply(1), reply(2)]), ("gw-b", [reply(0, message="m2")])]


async def test_frames_added_while_a_round_is_published_follow_in_order(running: tuple[ReplyBatcher, Broker]) -> None:
    batcher, broker = running
    broker.gate.clear()
    first = batcher.add("gw-a", reply(0))
    await asyncio.wait_for(broker.publishing.wait(), 1)  # the flusher took the first round
    later = [batcher.add("gw-a", reply(seq)) for seq in range(1, 5)]
    assert not first.done()
    broker.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 1)
    seqs = [entry.seq for _, entries in broker.sent for entry in entries]
    assert seqs == [0, 1, 2, 3, 4]
    assert len(broker.sent) == 2, "the four frames queued during the first publish share one message"


async def test_a_failed_publish_fails_its_round_only(running: tuple[ReplyBatcher, Broker]) -> None:
    batcher, broker = running
    broker.fail_next = True
    failed = batcher.add("gw-a", reply(0))
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(failed, 1)
    assert not batcher.backlogged
    await asyncio.wait_for(batcher.add("gw-a", reply(1)), 1)
    assert broker.sent == [("gw-a", [reply(1)])]


async def test_large_rounds_are_split_below_the_batch_size(running: tuple[ReplyBatcher, Broker]) -> None:
    batcher, broker = running
    big = [reply(seq)._replace(frame="x" * 600) for seq in range(6)]
    futures = [batcher.add("gw-a", entry) for entry in big]
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert [entry for _, entries in broker.sent for entry in entries] == big
    assert all(len(encode_batch(entries)) <= 2000 + 600 for _, entries in broker.sent)
    assert len(broker.sent) > 1


async def test_backlog_is_reported_while_the_broker_does_not_take_frames() -> None:
    broker = Broker()
    broker.gate.clear()
    batcher = ReplyBatcher(broker.publish, max_pending_bytes=1000)
    task = asyncio.create_task(batcher.run())
    futures = [batcher.add("gw-a", reply(seq)._replace(frame="y" * 300)) for seq in range(4)]
    assert batcher.backlogged
    broker.gate.set()
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert not batcher.backlogged
    task.cancel()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b'[["chunk","c","r","m",1,1,null]]',
        b'[["nope","c","r","m",1,1,null,"{}"]]',
        b'[["chunk","c","r","m","1",1,null,"{}"]]',
        b'[["chunk","c","r","m",true,1,null,"{}"]]',
    ],
)
def test_a_malformed_batch_is_refused_whole(body: bytes) -> None:
    with pytest.raises(MalformedBatch):
        decode_batch(body)


async def test_frames_still_waiting_when_the_batcher_stops_fail_instead_of_hanging() -> None:
    broker = Broker()
    broker.gate.clear()
    batcher = ReplyBatcher(broker.publish)
    task = asyncio.create_task(batcher.run())
    sending = batcher.add("gw-a", reply(0))
    await broker.publishing.wait()
    waiting = batcher.add("gw-a", reply(1))
    task.cancel()
    for done in (sending, waiting):
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(done, 1)
