"""Answers stored in groups (one statement for the answers of concurrent requests), on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

from chat_common.group_commit import GroupCommit
from chat_common.store import DATA_ERRORS, AnswerRow, ChatStore
from tests.support.services import Services, chat_store


def answer(chat_id: str, request_id: str, content: str = "a") -> AnswerRow:
    return AnswerRow(str(uuid.uuid4()), chat_id, request_id, content, "complete", "stop", None, 3, 5)


async def _questions(store: ChatStore, n: int) -> tuple[str, list[str]]:
    chat = await store.create_chat(f"grouped-{uuid.uuid4().hex[:6]}", "messages")
    requests = [str(uuid.uuid4()) for _ in range(n)]
    for request_id in requests:
        await store.add_user_message(message_id=str(uuid.uuid4()), chat_id=chat.id, request_id=request_id, content="q")
    return chat.id, requests


AnswerWriter = GroupCommit[AnswerRow, bool]


@contextlib.asynccontextmanager
async def _grouped(database_url: str, n: int) -> AsyncIterator[tuple[ChatStore, str, list[str], AnswerWriter]]:
    """``n`` questions stored in a new chat (its id, their request ids), and a group-commit writer of
    answers running on their store until the block ends."""
    async with chat_store(database_url) as store:
        chat_id, requests = await _questions(store, n)
        writer = GroupCommit(store.add_assistant_messages, data_errors=DATA_ERRORS)
        task = asyncio.create_task(writer.run())
        try:
            yield store, chat_id, requests, writer
        finally:
            task.cancel()


async def test_concurrent_answers_share_statements_and_each_is_stored_once(
    services: Services, db: asyncpg.Connection
) -> None:
    async with _grouped(services.database_url, 40) as (store, chat_id, requests, writer):
        # each request answered twice at once (a redelivery racing the first attempt): one is stored
        rows = [answer(chat_id, request_id) for request_id in requests for _ in range(2)]
        stored = await asyncio.wait_for(asyncio.gather(*(writer.submit(row) for row in rows)), 10)
        assert sum(stored) == 40
        assert all(stored[i] != stored[i + 1] for i in range(0, 80, 2))
        assert writer.statements < 40, "concurrent answers were written one statement each"
        counts = await db.fetch(
            "SELECT role, status, count(*) AS n FROM messages WHERE chat_id = $1::uuid GROUP BY role, status", chat_id
        )
        assert {(r["role"], r["status"], r["n"]) for r in counts} == {
            ("user", "complete", 40),
            ("assistant", "complete", 40),
        }
        again = await store.add_assistant_messages([answer(chat_id, requests[0])])
        assert again == [False]


async def test_one_answer_with_bad_data_fails_alone(services: Services, db: asyncpg.Connection) -> None:
    async with _grouped(services.database_url, 3) as (_, chat_id, requests, writer):
        rows = [
            answer(chat_id, requests[0]),
            answer(chat_id, requests[1], "bad \x00 text"),
            answer(chat_id, requests[2]),
        ]
        results = await asyncio.wait_for(
            asyncio.gather(*(writer.submit(row) for row in rows), return_exceptions=True), 10
        )
        assert results[0] is True
        assert results[2] is True
        assert isinstance(results[1], DATA_ERRORS)
        stored = await db.fetch(
            "SELECT request_id FROM messages WHERE chat_id = $1::uuid AND role = 'assistant'", chat_id
        )
        assert {str(r["request_id"]) for r in stored} == {requests[0], requests[2]}
