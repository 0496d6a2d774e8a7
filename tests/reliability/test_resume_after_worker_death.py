"""A client that moved to another connection (on another gateway) while its answer streamed gets the
whole answer there, once, even when the worker generating it is killed around the move."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import asyncpg
import pytest

from tests.reliability.helpers import assert_ledger, ended, frames_until, in_flight, joined, stream_of
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess
from tests.support.wait import eventually

TOKENS = 40


def _chunks(frames: list[dict[str, Any]]) -> int:
    return sum(f["type"] == "response_chunk" for f in frames)


def _rendered(frames: list[dict[str, Any]], attempt: int) -> str:
    """What a client renders: a ``response_start`` of a higher attempt that is not marked ``resumed``
    starts the text over; chunks already seen (by seq) are skipped."""
    text: list[str] = []
    last_seq = -1
    for frame in frames:
        data = frame.get("data", {})
        if frame["type"] == "response_start" and not data.get("resumed") and data.get("attempt", 1) > attempt:
            attempt, last_seq, text = data["attempt"], -1, []
        elif frame["type"] == "response_chunk" and data["seq"] > last_seq:
            last_seq = data["seq"]
            text.append(data["delta"])
    return "".join(text)


async def _holder(workers: list[ServiceProcess]) -> ServiceProcess:
    loads = await eventually(lambda: _loads(workers), timeout=10)
    return workers[loads.index(1)]


async def _loads(workers: list[ServiceProcess]) -> list[int] | None:
    loads = [await in_flight(w) for w in workers]
    return loads if sorted(loads) == [0, 1] else None


@pytest.mark.parametrize("kill", ["right_after_the_resume", "before_the_resume"])
async def test_answer_reaches_the_new_connection_when_its_worker_dies(
    rel: Cluster, fake: ServiceProcess, db: asyncpg.Connection, kill: str
) -> None:
    first, second, *workers = await asyncio.gather(
        rel.gateway(),
        rel.gateway(),
        rel.worker(WORKER_CONCURRENCY=1, RESUME_GRACE=15000),
        rel.worker(WORKER_CONCURRENCY=1, RESUME_GRACE=15000),
    )
    token = make_token(f"rel-resume-death-{kill}")
    marker = f"moving-{kill}-{uuid.uuid4().hex[:8]}"
    old, chat_id = await joined(first.extra["ws_url"], token)
    await old.send("send_message", {"content": f"{marker} [[slow:120]] [[tokens:{TOKENS}]]"})
    seen = await frames_until(old, lambda f: _chunks(f) >= 3, timeout=30)
    accepted = next(f["data"] for f in seen if f["type"] == "message_accepted")
    start = next(f["data"] for f in seen if f["type"] == "response_start")
    last_seq = max(f["data"]["seq"] for f in seen if f["type"] == "response_chunk")
    holder = await _holder(workers)
    other = next(w for w in workers if w is not holder)
    await old.close()  # the client's network drops; it reconnects to the other gateway

    if kill == "before_the_resume":
        holder.signal(signal.SIGKILL)
        await holder.wait_exit(10)
        await eventually(lambda: in_flight(other), timeout=15)  # attempt 2 streams to the closed connection

    new = await ChatClient.connect(second.extra["ws_url"])
    async with new:
        join = {"token": token, "chatType": "messages", "chatId": chat_id, "messageId": start["messageId"]}
        await new.send("join_chat", {**join, "lastSeq": last_seq})
        joined_frame = await new.recv_type("chat_joined")
        assert [m["role"] for m in joined_frame["data"]["history"]] == ["user"]
        if kill == "right_after_the_resume":
            holder.signal(signal.SIGKILL)
        frames = await frames_until(new, ended, timeout=30)
        # nothing more for this message: the next frame is the answer to a ping sent after the end
        await new.send("ping", requestId="after")
        frames += await frames_until(new, lambda f: bool(f) and f[-1]["type"] == "pong", timeout=10)

    kinds = [f["type"] for f in frames]
    assert "error" not in kinds, frames
    assert kinds.count("response_end") == 1, kinds
    end = next(f["data"] for f in frames if f["type"] == "response_end")
    assert end["messageId"] == start["messageId"]
    assert end["content"].endswith(f"point{TOKENS - 2}")  # the whole answer
    starts = [f["data"] for f in frames if f["type"] == "response_start"]
    assert starts[-1].get("attempt") == 2, starts
    assert not starts[-1].get("resumed"), starts  # a new attempt starts the text over
    assert _rendered(frames, attempt=1) == end["content"]

    assert len(await stream_of(fake, marker)) == 2  # the killed attempt and the one that finished
    outcome = await assert_ledger(db, [chat_id], {accepted["messageId"]})
    assert list(outcome.values()) == [("complete", None, "complete")]
