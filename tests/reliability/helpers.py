"""What the reliability tests look at: worker load, the fake model's streams, the stored ledger, dead letters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aio_pika
import asyncpg
import httpx

from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess


async def in_flight(worker: ServiceProcess) -> int:
    """Answers the worker process is generating now (its /health), 0 if it does not answer."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(f"http://127.0.0.1:{worker.extra['port']}/health")
            return int(response.json()["inFlight"])
    except httpx.HTTPError:
        return 0


async def streams(fake_openai: ServiceProcess) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(fake_openai.extra["url"].removesuffix("/v1") + "/_streams")
        return list(response.json())


async def stream_of(fake_openai: ServiceProcess, marker: str) -> list[dict[str, Any]]:
    return [s for s in await streams(fake_openai) if marker in s["question"]]


async def stream_ended(fake_openai: ServiceProcess, marker: str) -> dict[str, Any] | None:
    """The fake model's first stream whose question holds ``marker``, once it is done or aborted."""
    found = await stream_of(fake_openai, marker)
    return found[0] if found and found[0]["state"] != "open" else None


async def gateway_broker_connected(gateway: ServiceProcess) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        response = await client.get(gateway.extra["http_url"] + "/api/websocket/health")
        return "not connected to RabbitMQ" not in response.text


async def joined(url: str, token: str, chat_type: str = "messages") -> tuple[ChatClient, str]:
    client = await ChatClient.connect(url)
    frame = await client.join(token, chat_type)
    assert frame["type"] == "chat_joined", frame
    return client, str(frame["data"]["chatId"])


async def gateway_with_client(cluster: Cluster, user: str, **env: str | int) -> tuple[ServiceProcess, ChatClient, str]:
    """A new gateway in ``cluster`` (``env`` its settings) and a client of ``user`` joined to a new chat
    on it: the gateway, the client, the chat's id."""
    gateway = await cluster.gateway(**env)
    client, chat_id = await joined(gateway.extra["ws_url"], make_token(user))
    return gateway, client, chat_id


async def frames_until(
    client: ChatClient, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 20
) -> list[dict[str, Any]]:
    """Read frames until ``done(frames so far)``; each frame must come within ``timeout`` seconds."""
    frames: list[dict[str, Any]] = []
    while not done(frames):
        frames.append(await client.recv(timeout))
    return frames


def ended(frames: list[dict[str, Any]]) -> bool:
    """The last frame ends an answer: ``response_end`` or ``error``."""
    return bool(frames) and frames[-1]["type"] in ("response_end", "error")


async def ledger(db: asyncpg.Connection, chat_ids: list[str]) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT id::text, role, content, request_id::text, status, error_code, finish_reason"
            " FROM messages WHERE chat_id = ANY($1::uuid[]) ORDER BY seq",
            chat_ids,
        )
    )


async def assert_ledger(db: asyncpg.Connection, chat_ids: list[str], accepted: set[str]) -> dict[str, Any]:
    """Accepted user messages = stored user messages; each has one answer or one recorded failure.

    Returns, per user message id, ``(user status, error code, answer status or None)``.
    """
    rows = await ledger(db, chat_ids)
    users = {r["id"]: r for r in rows if r["role"] == "user"}
    assert set(users) == accepted, (set(users) ^ accepted, rows)
    answers: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        if row["role"] == "assistant":
            answers.setdefault(row["request_id"], []).append(row)
    outcome = {}
    for message_id, user in users.items():
        mine = answers.get(user["request_id"], [])
        assert len(mine) <= 1, f"two answers stored for one request: {mine}"
        assert user["status"] != "accepted", f"request of {message_id} has no outcome: {user}"
        if not mine:
            assert user["status"] == "failed", user
            assert user["error_code"], user
        outcome[message_id] = (user["status"], user["error_code"], mine[0]["status"] if mine else None)
    return outcome


async def queue_depth(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()
