"""Answers stored in groups (one statement for the answers of concurrent requests), on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator

import asyncpg

from chat_common.group_commit import GroupCommit
from chat_common.store import DATA_ERRORS, AnswerRow, ChatStore, HistoryQuery, QuestionRow
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


async def test_concurrent_questions_share_statements_keep_their_order_and_title_their_chats(
    services: Services, db: asyncpg.Connection
) -> None:
    async with chat_store(services.database_url) as store:
        chats = [await store.create_chat(f"questions-{uuid.uuid4().hex[:6]}", "messages") for _ in range(3)]
        writer = GroupCommit(store.add_user_messages, data_errors=DATA_ERRORS)
        task = asyncio.create_task(writer.run())
        try:
            rows = [
                QuestionRow(str(uuid.uuid4()), chat.id, str(uuid.uuid4()), f"question {n} of {chat.id[:4]}")
                for n in range(10)
                for chat in chats
            ]
            results = await asyncio.wait_for(asyncio.gather(*(writer.submit(row) for row in rows)), 10)
            assert results == [None] * len(rows)
            assert writer.statements < len(rows), "concurrent questions were written one statement each"
            # a question whose chat is gone fails alone: the one written with it is stored
            missing_chat = QuestionRow(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), "no such chat")
            late = QuestionRow(str(uuid.uuid4()), chats[0].id, str(uuid.uuid4()), "a late one")
            refused, stored = await asyncio.wait_for(
                asyncio.gather(writer.submit(missing_chat), writer.submit(late), return_exceptions=True), 10
            )
        finally:
            task.cancel()
        assert isinstance(refused, asyncpg.exceptions.ForeignKeyViolationError), refused
        assert stored is None
        for chat in chats:
            history = await store.history(chat.id, limit=100)
            late = ["a late one"] if chat is chats[0] else []
            assert [m.content for m in history] == [f"question {n} of {chat.id[:4]}" for n in range(10)] + late
            title = await db.fetchval("SELECT title FROM chats WHERE id = $1::uuid", chat.id)
            assert title == f"question 0 of {chat.id[:4]}"


async def test_histories_read_together_are_what_each_read_alone_returns(services: Services) -> None:
    async with chat_store(services.database_url) as store:
        chats = [await store.create_chat(f"histories-{uuid.uuid4().hex[:6]}", "messages") for _ in range(3)]
        asked: list[tuple[str, str]] = []
        for n in range(6):
            for index, chat in enumerate(chats[: n % 3 + 1]):
                message_id = str(uuid.uuid4())
                await store.add_user_message(
                    message_id=message_id, chat_id=chat.id, request_id=str(uuid.uuid4()), content=f"{n}/{index}"
                )
                asked.append((chat.id, message_id))
        queries = [HistoryQuery(chat_id, message_id) for chat_id, message_id in asked]
        together = await store.histories(queries, limit=4)
        alone = [await store.history(q.chat_id, limit=4, up_to_message=q.up_to_message) for q in queries]
        assert together == alone
        assert any(len(h) == 4 for h in together), "the limit applies"
        assert len(together[0]) == 1


async def test_a_history_query_with_a_malformed_id_fails_alone(services: Services) -> None:
    async with chat_store(services.database_url) as store:
        chat = await store.create_chat(f"malformed-{uuid.uuid4().hex[:6]}", "messages")
        message_id = str(uuid.uuid4())
        await store.add_user_message(message_id=message_id, chat_id=chat.id, request_id=str(uuid.uuid4()), content="q")
        reader = GroupCommit(functools.partial(store.histories, limit=5), data_errors=(ValueError, *DATA_ERRORS))
        task = asyncio.create_task(reader.run())
        try:
            bad, good = await asyncio.wait_for(
                asyncio.gather(
                    reader.submit(HistoryQuery("not-a-uuid", message_id)),
                    reader.submit(HistoryQuery(chat.id, message_id)),
                    return_exceptions=True,
                ),
                10,
            )
        finally:
            task.cancel()
        assert isinstance(bad, ValueError)
        assert isinstance(good, list)
        assert [m.content for m in good] == ["q"]
