"""Gateways stop gracefully (SIGTERM): clients are closed with 1012, spread out, after their answers
end or the grace runs out; a client that reconnects elsewhere resumes the answer where it was. A
rolling restart of every process loses no request."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from dataclasses import dataclass

import asyncpg
from websockets.exceptions import ConnectionClosed

import chat_client
from chat_client import ChatClientError, ConnectionLost, HistoryMessage, ServerError
from tests.reliability.helpers import assert_ledger, joined
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.wait import eventually

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


@dataclass
class Outcome:
    """Where one question of the rolling restart ended."""

    question: str
    result: str = "unknown"
    """``answered``, ``failed`` (with ``code``), ``unknown`` (nothing conclusive in time: the stored ledger
    decides) or ``unsent`` (the socket dropped before the gateway took it, and it is not stored)."""
    code: str | None = None
    user_message_id: str | None = None
    garbled: bool = False
    """the streamed chunks and the final content disagree (two attempts mixed, or a chunk lost)."""


async def _ask(client: chat_client.ChatClient, text: str, *, timeout: float) -> Outcome:
    """Ask one question and follow it to its outcome; resuming and the history are the library's work."""
    outcome = Outcome(f"{text} #{uuid.uuid4().hex[:10]}")
    try:
        async with asyncio.timeout(timeout):
            try:
                answer = await client.send(outcome.question)
            except ConnectionLost:
                return await _unaccepted(client, outcome, timeout)
            outcome.user_message_id = answer.user_message_id
            end = await answer.result()
    except TimeoutError:
        return outcome
    except ServerError as error:
        outcome.result, outcome.code = "failed", error.code
        return outcome
    outcome.result = "answered"
    outcome.garbled = not end.recovered and answer.text != end.content
    return outcome


async def _unaccepted(client: chat_client.ChatClient, outcome: Outcome, timeout: float) -> Outcome:
    """The socket dropped before ``message_accepted``: the question may be stored. Once the client is back,
    the chat's history says whether it is, and then holds its answer (or its failure)."""

    async def stored() -> tuple[HistoryMessage | None, HistoryMessage | None]:
        history = (await client.switch_chat(client.chat_id or "", client.chat_type)).history
        index = next((i for i, m in enumerate(history) if m.role == "user" and m.content == outcome.question), None)
        if index is None:
            return None, None
        after = history[index + 1] if index + 1 < len(history) else None
        return history[index], after if after is not None and after.role == "assistant" else None

    def settled(found: tuple[HistoryMessage | None, HistoryMessage | None]) -> bool:
        user, reply = found
        return user is None or reply is not None or user.status == "failed"

    user, reply = await eventually(stored, timeout=timeout, interval=1.0, accept=settled, retry_on=(ChatClientError,))
    if user is None:
        outcome.result = "unsent"
    else:
        outcome.user_message_id = user.id
        outcome.result = "answered" if reply is not None else "failed"
    return outcome


async def test_rolling_restart_of_every_process_loses_no_request(rel: Cluster, db: asyncpg.Connection) -> None:
    first_gateway, first_worker, second_gateway = await asyncio.gather(
        rel.gateway(SHUTDOWN_SPREAD=1000, SHUTDOWN_GRACE=2000), rel.worker(SHUTDOWN_GRACE=10000), rel.gateway()
    )
    urls = [first_gateway.extra["ws_url"], second_gateway.extra["ws_url"]]
    clients = [
        await chat_client.ChatClient.connect(
            urls[i % 2],
            make_token(f"rel-roll-{i}"),
            fallback_urls=[urls[(i + 1) % 2]],
            reconnect=chat_client.Backoff(initial=0.2, maximum=2.0),
            resume_timeout=1.0,
        )
        for i in range(4)
    ]
    stop = asyncio.Event()

    async def converse(client: chat_client.ChatClient) -> list[Outcome]:
        outcomes = []
        while not stop.is_set():
            outcomes.append(await _ask(client, "rolling [[slow:60]] [[tokens:20]]", timeout=40))
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
