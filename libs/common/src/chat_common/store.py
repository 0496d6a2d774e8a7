"""PostgreSQL access for chats and messages.

Every query that reads a chat takes the owner, so another user's chat is indistinguishable from one
that does not exist. Writes are idempotent on the request id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

from chat_common.frames import ChatType, iso_utc
from chat_common.migrations import apply_migrations

MessageStatus = Literal["accepted", "complete", "cancelled", "failed"]

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a protocol state left by a connection killed mid-query
)
"""what PostgreSQL being away looks like (refused, reset, terminated, restarting, pool closing):
a transient condition the caller reports as ``BUSY`` or retries, never a bug."""

DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    UnicodeError,
    orjson.JSONEncodeError,
)
"""what a value the store or the encoder refuses looks like (PostgreSQL class 22/23: a NUL in text,
a bad encoding; orjson's and UTF-8's refusals): the same data fails the same way every time, so it is
a final failure of the request, never a reason to redeliver it."""

CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class AnswerRow:
    """One answer to store (``ChatStore.add_assistant_messages``)."""

    message_id: str
    chat_id: str
    request_id: str
    content: str
    status: MessageStatus
    finish_reason: str | None
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class QuestionRow:
    """One user message to store (``ChatStore.add_user_messages``)."""

    message_id: str
    chat_id: str
    request_id: str
    content: str


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """The history a prompt needs (``ChatStore.histories``): a chat's latest messages up to one."""

    chat_id: str
    up_to_message: str


@dataclass(frozen=True, slots=True)
class Chat:
    id: str
    user_id: str
    chat_type: ChatType


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    role: str
    content: str
    created_at: datetime
    status: str

    def to_client(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "createdAt": iso_utc(self.created_at),
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    content: str
    status: str
    finish_reason: str | None
    error_code: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


async def create_pool(dsn: str, *, max_size: int = 10, migrate: bool = True) -> asyncpg.Pool:
    """A connection pool; with ``migrate`` the schema is brought up to date first."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        command_timeout=10,
        max_inactive_connection_lifetime=60,
        timeout=CONNECT_TIMEOUT_S,
        reset=_keep_session,
    )
    if migrate:
        async with pool.acquire() as connection:
            await apply_migrations(connection)
    return pool


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release without the default reset query (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``,
    ``pg_advisory_unlock_all()``): one more round trip for every query, and this code sets no session
    state, listens to nothing and holds no advisory lock past the migration, which unlocks its own.
    An open transaction is still rolled back by asyncpg before this runs."""


class ChatStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create_chat(self, user_id: str, chat_type: ChatType) -> Chat:
        chat_id = uuid.uuid4()
        await self.pool.execute(
            "INSERT INTO chats (id, user_id, chat_type) VALUES ($1, $2, $3)", chat_id, user_id, chat_type
        )
        return Chat(id=str(chat_id), user_id=user_id, chat_type=chat_type)

    async def get_chat(self, chat_id: str, user_id: str) -> Chat | None:
        """The chat if it exists and belongs to ``user_id``; ``None`` otherwise, whichever it is."""
        key = parse_uuid(chat_id)
        if key is None:
            return None
        row = await self.pool.fetchrow("SELECT chat_type FROM chats WHERE id = $1 AND user_id = $2", key, user_id)
        if row is None:
            return None
        return Chat(id=str(key), user_id=user_id, chat_type=row["chat_type"])

    async def list_chats(self, user_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT id, chat_type, title, updated_at FROM chats WHERE user_id = $1 ORDER BY updated_at DESC LIMIT $2",
            user_id,
            limit,
        )
        return [
            {
                "chatId": str(row["id"]),
                "chatType": row["chat_type"],
                "title": row["title"],
                "updatedAt": iso_utc(row["updated_at"]),
            }
            for row in rows
        ]

    async def histories(self, queries: list[HistoryQuery], *, limit: int) -> list[list[StoredMessage]]:
        """For each query, what ``history(chat_id, limit=limit, up_to_message=...)`` returns: all of them
        in one statement (the prompts of concurrent requests read together)."""
        rows = await self.pool.fetch(
            "SELECT q.ord, m.id, m.role, m.content, m.created_at, m.status"
            " FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS q(chat_id, up_to, ord)"
            " CROSS JOIN LATERAL (SELECT id, role, content, created_at, status, seq FROM messages"
            " WHERE chat_id = q.chat_id AND seq <= (SELECT seq FROM messages WHERE id = q.up_to)"
            " ORDER BY seq DESC LIMIT $3) m"
            " ORDER BY q.ord, m.seq",
            [uuid.UUID(query.chat_id) for query in queries],
            [uuid.UUID(query.up_to_message) for query in queries],
            limit,
        )
        found: list[list[StoredMessage]] = [[] for _ in queries]
        for row in rows:
            found[row["ord"] - 1].append(_stored_message(row))
        return found

    async def history(self, chat_id: str, *, limit: int, up_to_message: str | None = None) -> list[StoredMessage]:
        """The latest ``limit`` messages of a chat, oldest first (up to and including a message)."""
        if up_to_message is None:
            rows = await self.pool.fetch(
                "SELECT id, role, content, created_at, status FROM messages WHERE chat_id = $1"
                " ORDER BY seq DESC LIMIT $2",
                uuid.UUID(chat_id),
                limit,
            )
        else:
            rows = await self.pool.fetch(
                "SELECT id, role, content, created_at, status FROM messages WHERE chat_id = $1"
                " AND seq <= (SELECT seq FROM messages WHERE id = $3) ORDER BY seq DESC LIMIT $2",
                uuid.UUID(chat_id),
                limit,
                uuid.UUID(up_to_message),
            )
        return [_stored_message(row) for row in reversed(rows)]

    async def add_user_message(self, *, message_id: str, chat_id: str, request_id: str, content: str) -> None:
        await self.add_user_messages([QuestionRow(message_id, chat_id, request_id, content)])

    async def add_user_messages(self, rows: list[QuestionRow]) -> list[None]:
        """Store many questions in one statement (atomic by itself), in their order: the inserts, and
        each chat's ``updated_at`` and title (its first question's start) once, instead of BEGIN,
        INSERT, UPDATE, COMMIT per question."""
        await self.pool.execute(
            "WITH rows AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[])"
            " WITH ORDINALITY AS r(id, chat_id, content, request_id, ord)),"
            " added AS ("
            " INSERT INTO messages (id, chat_id, role, content, request_id, status)"
            " SELECT id, chat_id, 'user', content, request_id, 'accepted' FROM rows ORDER BY ord)"
            " UPDATE chats c SET updated_at = clock_timestamp(), title = COALESCE(c.title, left(f.content, 80))"
            " FROM (SELECT DISTINCT ON (chat_id) chat_id, content FROM rows ORDER BY chat_id, ord) f"
            " WHERE c.id = f.chat_id",
            [uuid.UUID(row.message_id) for row in rows],
            [uuid.UUID(row.chat_id) for row in rows],
            [row.content for row in rows],
            [uuid.UUID(row.request_id) for row in rows],
        )
        return [None] * len(rows)

    async def mark_request(
        self, request_id: str, status: MessageStatus, *, error_code: str | None = None, only_open: bool = False
    ) -> None:
        """Record what became of a request on its user message (answered, failed with a code).

        With ``only_open`` an outcome recorded before (an answer, another failure) is kept.
        """
        await self.pool.execute(
            "UPDATE messages SET status = $2, error_code = $3 WHERE request_id = $1 AND role = 'user'"
            " AND (NOT $4 OR status = 'accepted')",
            uuid.UUID(request_id),
            status,
            error_code,
            only_open,
        )

    async def add_assistant_message(
        self,
        *,
        message_id: str,
        chat_id: str,
        request_id: str,
        content: str,
        status: MessageStatus,
        finish_reason: str | None,
        error_code: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> bool:
        """Store the answer to a request once; return ``False`` if it was stored before."""
        row = AnswerRow(
            message_id,
            chat_id,
            request_id,
            content,
            status,
            finish_reason,
            error_code,
            prompt_tokens,
            completion_tokens,
        )
        return (await self.add_assistant_messages([row]))[0]

    async def add_assistant_messages(self, rows: list[AnswerRow]) -> list[bool]:
        """Store many answers in one statement; for each row whether it was stored now (``False``: before).

        One statement (atomic by itself): the inserts, and each question's status only where its
        answer's insert happened, instead of BEGIN, INSERT, UPDATE, COMMIT per answer. Two rows of one
        request in one call: the first is stored, the second is told it was stored before."""
        first: dict[uuid.UUID, AnswerRow] = {}
        for row in rows:
            first.setdefault(uuid.UUID(row.request_id), row)
        unique = list(first.values())
        added = await self.pool.fetch(
            "WITH rows AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::text[],"
            " $6::text[], $7::text[], $8::int[], $9::int[]) AS r(id, chat_id, content, request_id, status,"
            " error_code, finish_reason, prompt_tokens, completion_tokens)),"
            " added AS ("
            " INSERT INTO messages (id, chat_id, role, content, request_id, status, error_code,"
            " finish_reason, prompt_tokens, completion_tokens)"
            " SELECT id, chat_id, 'assistant', content, request_id, status, error_code, finish_reason,"
            " prompt_tokens, completion_tokens FROM rows"
            " ON CONFLICT DO NOTHING RETURNING request_id, status, error_code),"
            " question AS ("
            " UPDATE messages m SET status = a.status, error_code = a.error_code FROM added a"
            " WHERE m.request_id = a.request_id AND m.role = 'user' RETURNING 1)"
            " SELECT request_id FROM added",
            [uuid.UUID(row.message_id) for row in unique],
            [uuid.UUID(row.chat_id) for row in unique],
            [row.content for row in unique],
            [uuid.UUID(row.request_id) for row in unique],
            [row.status for row in unique],
            [row.error_code for row in unique],
            [row.finish_reason for row in unique],
            [row.prompt_tokens for row in unique],
            [row.completion_tokens for row in unique],
        )
        stored = {record["request_id"] for record in added}
        return [(key := uuid.UUID(row.request_id)) in stored and first[key] is row for row in rows]

    async def fail_stale_requests(self, *, older_than_s: float, error_code: str = "TIMEOUT") -> int:
        """Record as failed every question accepted more than ``older_than_s`` ago that has no answer.

        The gateway stores a question before it publishes the request; a gateway killed in between
        leaves a question nobody will answer. Past its deadline it can only be a failure; an answer
        that still comes later overwrites the status (``add_assistant_message``).
        """
        result = await self.pool.execute(
            "UPDATE messages u SET status = 'failed', error_code = $2"
            " WHERE u.role = 'user' AND u.status = 'accepted'"
            " AND u.created_at < clock_timestamp() - make_interval(secs => $1)"
            " AND NOT EXISTS (SELECT 1 FROM messages a WHERE a.request_id = u.request_id AND a.role = 'assistant')",
            older_than_s,
            error_code,
        )
        return int(result.split()[-1])

    async def get_answer(self, request_id: str) -> StoredAnswer | None:
        """The stored answer to a request, if any (to re-send it when a redelivery finds it)."""
        row = await self.pool.fetchrow(
            "SELECT content, status, finish_reason, error_code, prompt_tokens, completion_tokens"
            " FROM messages WHERE request_id = $1 AND role = 'assistant'",
            uuid.UUID(request_id),
        )
        if row is None:
            return None
        return StoredAnswer(
            content=row["content"],
            status=row["status"],
            finish_reason=row["finish_reason"],
            error_code=row["error_code"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
        )

    async def answer_exists(self, request_id: str) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT true FROM messages WHERE request_id = $1 AND role = 'assistant'",
                uuid.UUID(request_id),
            )
        )


def _stored_message(row: asyncpg.Record) -> StoredMessage:
    """A history row (``id, role, content, created_at, status``) as the store hands it out."""
    return StoredMessage(
        id=str(row["id"]),
        role=row["role"],
        content=row["content"],
        created_at=row["created_at"],
        status=row["status"],
    )
