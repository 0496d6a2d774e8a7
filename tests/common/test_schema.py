"""The schema is applied once, idempotently, even when every service starts at the same moment."""

from __future__ import annotations

import asyncio

import asyncpg

from chat_common.migrations import MIGRATIONS, apply_migrations
from tests.support.services import Services, drop_database, make_database


async def test_concurrent_starts_apply_each_migration_once(services: Services) -> None:
    base = services.database_url.rsplit("/", 1)[0] + "/postgres"
    url, name = await make_database(base)
    try:
        connections = [await asyncpg.connect(url) for _ in range(4)]
        try:
            applied = await asyncio.gather(*(apply_migrations(c) for c in connections))
            assert sorted(v for versions in applied for v in versions) == [v for v, _ in MIGRATIONS]
            assert await apply_migrations(connections[0]) == []
            rows = await connections[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == [v for v, _ in MIGRATIONS]
        finally:
            for connection in connections:
                await connection.close()
    finally:
        await drop_database(base, name)
