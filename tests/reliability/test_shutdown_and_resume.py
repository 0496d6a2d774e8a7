"""Gateways stop gracefully (SIGTERM): clients are closed with 1012, spread out, after their answers
end or the grace runs out; a client that reconnects elsewhere resumes the answer where it was. A
rolling restart of every process loses no request."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import asyncpg
from websockets.exceptions import ConnectionClosed

from tests.reliability.helpers import assert_ledger, joined
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.resilient import Outcome, ResilientClient

GRACEFUL_EXIT = (0, -signal.SIGTERM)
"""uvicorn re-raises the signal it handled once its shutdown is complete."""


async def _close_code(client: ChatClient, timeout: float = 15) -> tuple[int | None, float]:
    """Read until the server closes; the close code and when it came."""
    try:
        while True:
            await asyncio.wait_for(client.ws.recv(), timeout)
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), time.monotonic()


async def test_gateway_sigterm_drains_and_a_cut_answer_resumes_on_another_gateway(
    rel: Cluster, db: asyncpg.Connection
) -> None:
    leaving, staying, _ = await asyncio.gather(
        rel.gateway(SHUTDOWN_SPREAD=2000, SHUTDOWN_GRACE=3000, WS_MAX_CONNECTIONS_PER_USER=10),
        rel.gateway(),
        rel.worker(RESUME_GRACE=8000),
    )
    token = make_token("rel-drain")
    url = leaving.extra["ws_url"]
    idle = [(await joined(url, token))[0] for _ in range(4)]
    short, short_chat = await joined(url, token)
    long, long_chat = await joined(url, token)

    await short.send("send_message", {"content": "short [[slow:100]] [[tokens:15]]"})
    await long.send("send_message", {"content": "long [[slow:100]] [[tokens:80]]"})
    await short.recv_type("response_chunk")
    seen = []
    start = None
    while len(seen) < 3:
        frame = await long.recv()
        if frame["type"] == "response_start":
            start = frame["data"]
        if frame["type"] == "response_chunk":
            seen.append(frame["data"])
    assert start is not None
    signalled = time.monotonic()
    leaving.signal(signal.SIGTERM)
    # watch the idle connections from now on, so each close is timed when it arrives, not when read
    watchers = [asyncio.create_task(_close_code(c)) for c in idle]

    short_answer = await short.collect(timeout=10)  # ends within the grace, before the close
    assert short_answer.end is not None, short_answer.frames
    closes = await asyncio.gather(*watchers)
    assert {code for code, _ in closes} == {1012}
    moments = sorted(at - signalled for _, at in closes)
    assert moments[-1] < 2000 / 1000 + 1.5
    assert moments[-1] - moments[0] > 0.1, moments  # spread out, not all at once
    assert (await _close_code(short))[0] == 1012
    long_code = None
    while long_code is None:  # the long answer is cut by the grace: its frames so far, then 1012
        try:
            frame = json.loads(await asyncio.wait_for(long.ws.recv(), 10))
        except ConnectionClosed as closed:
            long_code = closed.rcvd.code if closed.rcvd else 0
            continue
        if frame["type"] == "response_chunk":
            seen.append(frame["data"])
    assert long_code == 1012
    assert time.monotonic() - signalled < 3 + 2
    assert await leaving.wait_exit(15) in GRACEFUL_EXIT

    last_seq = seen[-1]["seq"]
    resumed = await ChatClient.connect(staying.extra["ws_url"])
    async with resumed:
        await resumed.send(
            "join_chat",
            {
                "token": token,
                "chatType": "messages",
                "chatId": long_chat,
                "messageId": start["messageId"],
                "lastSeq": last_seq,
            },
        )
        joined_frame = await resumed.recv_type("chat_joined")
        assert [m["role"] for m in joined_frame["data"]["history"]] == ["user"]  # the answer is not stored yet
        answer = await resumed.collect(timeout=20)
    assert answer.start is not None
    assert answer.start["resumed"] is True
    assert answer.start["messageId"] == start["messageId"]
    assert answer.chunks[0]["seq"] == last_seq + 1, (last_seq, answer.chunks[:2])
    assert answer.end is not None, answer.frames
    whole = "".join(c["delta"] for c in seen) + answer.text
    assert whole == answer.end["content"]
    assert answer.end["content"].endswith("point78")

    users = await db.fetch(
        "SELECT id::text FROM messages WHERE chat_id = ANY($1::uuid[]) AND role = 'user'", [short_chat, long_chat]
    )
    outcome = await assert_ledger(db, [short_chat, long_chat], {r["id"] for r in users})
    assert sorted(outcome.values()) == [("complete", None, "complete")] * 2


async def test_rolling_restart_of_every_process_loses_no_request(rel: Cluster, db: asyncpg.Connection) -> None:
    first_gateway, first_worker, second_gateway = await asyncio.gather(
        rel.gateway(SHUTDOWN_SPREAD=1000, SHUTDOWN_GRACE=2000), rel.worker(SHUTDOWN_GRACE=10000), rel.gateway()
    )
    urls = [first_gateway.extra["ws_url"], second_gateway.extra["ws_url"]]
    clients = [
        ResilientClient(urls[i % 2 : i % 2 + 1] + urls[(i + 1) % 2 : (i + 1) % 2 + 1], make_token(f"rel-roll-{i}"))
        for i in range(4)
    ]
    for client in clients:
        await client.start()
    stop = asyncio.Event()

    async def converse(client: ResilientClient) -> list[Outcome]:
        outcomes = []
        while not stop.is_set():
            outcomes.append(await client.ask("rolling [[slow:60]] [[tokens:20]]", timeout=40))
        return outcomes

    talks = [asyncio.create_task(converse(c)) for c in clients]
    await asyncio.sleep(2)  # the scenario: conversations under way before the restart begins
    second_worker = await rel.worker()
    first_gateway.signal(signal.SIGTERM)
    assert await first_gateway.wait_exit(20) in GRACEFUL_EXIT
    first_worker.signal(signal.SIGTERM)
    assert await first_worker.wait_exit(20) == 0
    await asyncio.sleep(2)  # the scenario: conversations go on for a while on the processes that remain
    stop.set()
    results = [o for talk in await asyncio.gather(*talks) for o in talk]
    for client in clients:
        await client.close()

    assert second_worker.process is not None
    assert second_worker.process.poll() is None
    sent = [o for o in results if o.result != "unsent"]
    assert len(sent) >= 8, results
    assert all(o.result == "answered" for o in sent), [o for o in sent if o.result != "answered"]
    assert not any(o.garbled for o in sent)
    chats = [c.chat_id for c in clients if c.chat_id]
    users = await db.fetch("SELECT id::text FROM messages WHERE chat_id = ANY($1::uuid[]) AND role = 'user'", chats)
    assert {o.user_message_id for o in sent} == {r["id"] for r in users}
    outcome = await assert_ledger(db, chats, {r["id"] for r in users})
    assert all(v == ("complete", None, "complete") for v in outcome.values()), outcome
    assert sum(c.reconnects for c in clients) >= 2  # the clients of the first gateway moved
