"""Questions stored but never published (the gateway died in between, or the commit's reply was lost)
are recorded as failed once past their deadline; answered or newer ones are left alone."""

from __future__ import annotations

import uuid

import asyncpg

from tests.support.services import Services, chat_store


async def test_stale_questions_without_an_answer_are_recorded_as_timeout(
    services: Services, db: asyncpg.Connection
) -> None:
    async with chat_store(services.database_url) as store:
        chat = await store.create_chat(f"rel-reaper-{uuid.uuid4().hex[:6]}", "messages")
        ids = {name: (str(uuid.uuid4()), str(uuid.uuid4())) for name in ("lost", "answered", "recent")}
        for message_id, request_id in ids.values():
            await store.add_user_message(message_id=message_id, chat_id=chat.id, request_id=request_id, content="q")
        await store.add_assistant_message(
            message_id=str(uuid.uuid4()),
            chat_id=chat.id,
            request_id=ids["answered"][1],
            content="a",
            status="complete",
            finish_reason="stop",
        )
        await db.execute(
            "UPDATE messages SET created_at = created_at - interval '10 minutes' WHERE id = ANY($1::uuid[])",
            [ids["lost"][0], ids["answered"][0]],
        )
        assert await store.fail_stale_requests(older_than_s=300) == 1
        rows = {
            str(r["id"]): (r["status"], r["error_code"])
            for r in await db.fetch("SELECT id, status, error_code FROM messages WHERE chat_id = $1::uuid", chat.id)
        }
        assert rows[ids["lost"][0]] == ("failed", "TIMEOUT")
        assert rows[ids["answered"][0]] == ("complete", None)
        assert rows[ids["recent"][0]] == ("accepted", None)
        assert await store.fail_stale_requests(older_than_s=300) == 0
