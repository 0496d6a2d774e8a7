"""Versioned schema migrations, applied once by whichever service starts first.

A PostgreSQL advisory lock serialises concurrent starts; each version runs in its own transaction
and is recorded in ``schema_migrations``, so applying is idempotent.
"""

from __future__ import annotations

import logging

import asyncpg

logger = logging.getLogger(__name__)

_LOCK_KEY = 0x63686174  # "chat"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE chats (
            id          uuid PRIMARY KEY,
            user_id     text NOT NULL,
            chat_type   text NOT NULL CHECK (chat_type IN ('documents', 'messages')),
            title       text,
            created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX chats_user_recent_idx ON chats (user_id, updated_at DESC);

        CREATE TABLE messages (
            seq               bigint GENERATED ALWAYS AS IDENTITY,
            id                uuid PRIMARY KEY,
            chat_id           uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
            role              text NOT NULL CHECK (role IN ('user', 'assistant')),
            content           text NOT NULL,
            request_id        uuid NOT NULL,
            status            text NOT NULL DEFAULT 'complete'
                              CHECK (status IN ('accepted', 'complete', 'cancelled', 'failed')),
            error_code        text,
            finish_reason     text,
            prompt_tokens     integer,
            completion_tokens integer,
            created_at        timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX messages_chat_seq_idx ON messages (chat_id, seq DESC);
        -- one user message and at most one answer per request: redelivery never duplicates
        CREATE UNIQUE INDEX messages_request_role_uidx ON messages (request_id, role);
        """,
    ),
    (
        2,
        """
        -- questions still waiting for an outcome, for the reaper that records lost requests as failed
        CREATE INDEX messages_open_requests_idx ON messages (created_at)
            WHERE role = 'user' AND status = 'accepted';
        """,
    ),
]


async def apply_migrations(connection: asyncpg.Connection) -> list[int]:
    """Apply the missing migrations; return the versions applied now."""
    applied: list[int] = []
    await connection.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            async with connection.transaction():
                await connection.execute(sql)
                await connection.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            logger.info("applied schema migration %d", version)
            applied.append(version)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied
